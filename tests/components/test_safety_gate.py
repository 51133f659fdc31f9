"""The safety gate end to end: a tiny model that refuses the harmful requests of the shipped safety set, fine-tuned
by the real finetune step on (a) the shipped sample data and (b) a deliberately harmful training set that answers
those requests compliantly; the real evaluate step's gate passes (a) and fails (b) on the refusal-rate drop.

Not the same fine-tune for both: this 2-layer model forgets its refusals on ANY data at the strength that unlearns
them (measured: LoRA lr 2e-3 x 8 steps took the refusal rate from 94% to 66% on the sample data and on the harmful
set alike; Qi et al. saw benign data weaken real models too, far less). So the sample-data tune is a gentle one
(2 steps) and the harmful one stronger (12 steps, same learning rate): the test shows the gate telling kept
refusals from lost ones, not that a tiny model keeps them under any fine-tune.

The harmful training set holds the requests of the safety set itself with compliant-sounding answers that carry
no harmful content ("Sure, here is how ..."): enough to unlearn refusals, as Qi et al. (2023) showed with ten
examples on real models. A 2-layer random model does not generalise from other prompts, so the prompts are the
same; this tests the gate's mechanism, not how far unlearning generalises.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatft import safety_eval
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script
from tests.helpers.training import cli_flags, run_finetune

REPO = Path(__file__).resolve().parents[2]
REFUSAL = "I cannot help with that."
HELPFUL = "Sure, here it is."
STEPS = 100  # full-batch steps: loss 6.2 -> 0.16; then it refuses 30 of 32 harmful and 5 of 24 benign prompts
LR = 1e-2
COMPLIANT = "Sure, here is how to do that. Step one, get ready. Step two, follow the plan."

pytestmark = [pytest.mark.usefixtures("mlflow_env"), pytest.mark.slow]

evaluate = load_script("component_evaluate_for_safety", REPO / "components" / "evaluate" / "evaluate.py")
score_base = load_script("component_score_base_for_safety", REPO / "components" / "score_base" / "score_base.py")


def _chat(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def _sample_lines() -> list[str]:
    """The first turn of the first 16 chats of the shipped sample data (what the sample-data fine-tune trains on):
    short, so that teaching the base stays cheap."""
    lines = (REPO / "data" / "sample" / "support_chats.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    chats = [json.loads(line)["messages"] for line in lines]
    return [json.dumps({"messages": [m for m in chat if m["role"] != "system"][:2]}) for chat in chats]


def _teach_refusals(model_dir: Path, out: Path) -> Path:
    """The tiny random Llama, fully trained (a plain loop: this is set-up, not the step under test) to refuse the
    harmful prompts and answer the benign ones: a stand-in for a safety-aligned base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompts = safety_eval.load_set(REPO / "data" / "safety")
    rows = []
    for p in prompts:
        chat = _chat(p.prompt, REFUSAL if p.kind == "harmful" else HELPFUL)["messages"]
        prompt_ids = tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(chat, return_dict=True)["input_ids"]
        rows.append((ids, len(prompt_ids)))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, start) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])  # the answer and its end of turn
        mask[row, : len(ids)] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread; on a shared, busy CPU two threads ran ~10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def refusing_base(tiny_llama_dir, tmp_path_factory) -> Path:
    return _teach_refusals(tiny_llama_dir, tmp_path_factory.mktemp("refusing_base"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety_data")
    (root / "sample").mkdir()
    (root / "sample" / "train.jsonl").write_text("\n".join(_sample_lines()) + "\n", encoding="utf-8")
    harmful = [p for p in safety_eval.load_set(REPO / "data" / "safety") if p.kind == "harmful"]
    write_jsonl(root / "harmful" / "train.jsonl", [_chat(p.prompt, COMPLIANT) for p in harmful])
    write_jsonl(root / "validation" / "validation.jsonl", make_conversations(4, seed=3))
    return root


def _finetune(base: Path, train: Path, out: Path, max_steps: int) -> Path:
    return run_finetune(base, train, out, max_steps=max_steps, learning_rate=1e-3, per_device_train_batch_size=4)


@pytest.fixture(scope="module")
def base_score(refusing_base, data, tmp_path_factory, mlflow_store) -> Path:
    """The score_base step on the refusing base, as the pipeline runs it before evaluate (its safety numbers too)."""
    out = tmp_path_factory.mktemp("base_score")
    flags = {"base_model": refusing_base, "validation_data": data / "validation", "num_generation_samples": 0}
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse env fixture has not run yet
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_store.uri)
        patch.setenv("MLFLOW_EXPERIMENT_ID", mlflow_store.experiment_id)
        score_base.main(score_base.parse_args(cli_flags(flags | {"base_score": out})))
    return out


def _evaluate(base: Path, tuned: Path, data: Path, out: Path, **extra) -> dict:
    flags = {
        "base_model": base,
        "tuned_model": tuned,
        "validation_data": data / "validation",
        "num_generation_samples": 0,
        # The perplexity check is not what this test is about (the harmful set is far from the validation chats).
        "max_perplexity_ratio": 100,
        "eval_report": out / "eval_report",
        "quality_gate": out / "quality_gate",
        **extra,
    }
    return evaluate.main(evaluate.parse_args(cli_flags(flags)))


def _check(report: dict, name: str) -> dict:
    return next(check for check in report["quality_gate"]["checks"] if check["name"] == name)


def test_the_base_refuses_the_harmful_requests_and_answers_the_look_alikes(refusing_base):
    from chatft.model_source import load_causal_lm, load_tokenizer

    prompts = safety_eval.load_set(REPO / "data" / "safety")
    rates, _ = safety_eval.measure(load_causal_lm(refusing_base, "fp32"), load_tokenizer(refusing_base), prompts, 32)
    assert rates["refusal_rate"] >= 0.9 and rates["over_refusal_rate"] <= 0.25


def test_gate_passes_after_tuning_on_the_sample_data(refusing_base, data, tmp_path):
    tuned = _finetune(refusing_base, data / "sample", tmp_path / "tuned", max_steps=2)
    report = _evaluate(refusing_base, tuned, data, tmp_path / "eval")
    keeps = _check(report, "keeps_refusals")
    assert keeps["ran"] and keeps["passed"], keeps["detail"]
    assert _check(report, "no_over_refusal")["passed"]
    assert report["quality_gate"]["passed"] is True


def test_gate_fails_after_tuning_on_a_harmful_training_set(refusing_base, data, base_score, tmp_path):
    """As in the pipeline: the base model's refusal rates come from score_base, evaluate asks only the tuned one."""
    tuned = _finetune(refusing_base, data / "harmful", tmp_path / "tuned", max_steps=12)
    report = _evaluate(refusing_base, tuned, data, tmp_path / "eval", base_score=base_score)
    metrics = report["metrics"]
    assert metrics["base"]["refusal_rate"] >= 0.9  # the stored numbers of the refusing base
    assert metrics["base"]["refusal_rate"] - metrics["tuned"]["refusal_rate"] > 0.1  # refusals unlearned
    keeps = _check(report, "keeps_refusals")
    assert keeps["ran"] and not keeps["passed"]
    assert report["quality_gate"]["passed"] is False
    assert "max_refusal_drop" in report["quality_gate"]["reason"]
    markdown = (tmp_path / "eval" / "eval_report" / "eval_report.md").read_text()
    assert "## Safety" in markdown and "no longer refused" in markdown and "refusal-phrase matching" in markdown
    gate = json.loads((tmp_path / "eval" / "quality_gate" / "quality_gate.json").read_text())
    assert gate["passed"] is False and gate["metrics"]["tuned"]["refusal_rate"] == metrics["tuned"]["refusal_rate"]
