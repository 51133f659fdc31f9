"""score_base.py run for real on a tiny Llama: it scores the base model exactly as evaluate would, evaluate reuses
that score only when it was computed on the same inputs, and batched scoring and generation match one at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script, snapshot_component

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("mlflow_env")

score_base = load_script("component_score_base", REPO / "components" / "score_base" / "score_base.py")
evaluate = score_base._evaluate_module()


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("validation")
    write_jsonl(folder / "validation.jsonl", make_conversations(7, seed=2))
    return folder


def flags(**values) -> list[str]:
    return [item for k, v in values.items() for item in (f"--{k}", str(v))]


def test_the_base_score_is_what_evaluate_measures_itself_and_evaluate_uses_it(tiny_llama_dir, validation, tmp_path):
    common = {"validation_data": validation, "max_seq_length": 128, "num_generation_samples": 2, "max_new_tokens": 6}
    score = score_base.main(
        score_base.parse_args(flags(base_model=tiny_llama_dir, base_score=tmp_path / "base", **common))
    )
    assert json.loads((tmp_path / "base" / "base_score.json").read_text())["digest"] == score["digest"]
    assert len(score["answers"]) == 2 and score["metrics"]["assistant_tokens"] > 0

    def run(out: Path, **extra) -> dict:
        values = {"base_model": tiny_llama_dir, "tuned_model": tiny_llama_dir, **common, **extra}
        return evaluate.main(
            evaluate.parse_args(flags(eval_report=out / "report", quality_gate=out / "gate", **values))
        )

    own = run(tmp_path / "own")
    reused = run(tmp_path / "reused", base_score=tmp_path / "base")
    assert reused["metrics"]["base"] == pytest.approx(own["metrics"]["base"])
    assert [s["base"] for s in reused["samples"]] == [s["base"] for s in own["samples"]]
    assert reused["metrics"]["base"]["perplexity"] == pytest.approx(score["metrics"]["perplexity"])

    # A base score of other inputs is refused, naming what to do, never silently compared.
    with pytest.raises(evaluate.EvalError, match="base_score: .*computed on other validation chats, max_seq_length"):
        run(tmp_path / "other", base_score=tmp_path / "base", max_new_tokens=7)
    with pytest.raises(evaluate.EvalError, match="base_score: .*base_score.json not found"):
        run(tmp_path / "missing", base_score=tmp_path)


def test_the_step_runs_from_its_snapshot_as_the_pipeline_runs_it(tiny_llama_dir, validation, tmp_path):
    """additional_includes bring evaluate.py and chatft beside the script; nothing comes from the repository."""
    snapshot = snapshot_component(REPO / "components" / "score_base", tmp_path / "snapshot")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "score_base.py"] + flags(
        base_model=tiny_llama_dir, validation_data=validation, base_score=tmp_path / "out", num_generation_samples=0
    )
    done = subprocess.run(command, cwd=snapshot, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "base_score.json").read_text())["answers"] == []


def test_batched_scoring_equals_one_chat_at_a_time(tiny_llama_dir, validation):
    from chatft.model_source import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    encoded = evaluate._encode(tokenizer, evaluate._load_chats(validation), 128)
    assert len({len(ids) for ids, _ in encoded}) > 1, "chats of different lengths, so batches are padded"
    model = load_causal_lm(tiny_llama_dir, dtype="fp32").eval()
    one = evaluate._score(model, encoded, batch_size=1)
    batched = evaluate._score(model, encoded, batch_size=4)
    assert batched["assistant_tokens"] == one["assistant_tokens"]
    assert batched["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert batched["token_accuracy"] == pytest.approx(one["token_accuracy"], abs=1 / one["assistant_tokens"])


def test_batched_greedy_answers_equal_one_prompt_at_a_time(tiny_llama_dir, validation):
    from chatft.model_source import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    samples = evaluate._samples(evaluate._load_chats(validation), 4)
    model = load_causal_lm(tiny_llama_dir, dtype="fp32").eval()
    one = evaluate._generate(model, tokenizer, samples, max_new_tokens=8, batch_size=1)
    assert evaluate._generate(model, tokenizer, samples, max_new_tokens=8, batch_size=4) == one
