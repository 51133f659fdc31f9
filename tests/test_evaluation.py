"""chatft.evaluation: batched scoring and greedy answers match one at a time, answers stop at the end of turn, and
the digest of what was scored stays what cached score_base outputs recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatft import evaluation
from tests.helpers.chat_data import make_conversations, write_jsonl


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("validation")
    write_jsonl(folder / "validation.jsonl", make_conversations(7, seed=2))
    return folder


def test_the_digest_is_the_one_earlier_base_scores_recorded():
    """A changed digest would make evaluate refuse every cached base_score: this one was computed before the move."""
    encoded = [([1, 2, 3], [0, 1, 1]), ([4, 5], [0, 1])]
    samples = [{"prompt": [{"role": "user", "content": "Hi"}], "reference": "Hello"}]
    digest = evaluation.scoring_digest(evaluation.Scoring([], None, encoded, samples), max_new_tokens=64)
    assert digest == "df184a019bccbe6ea9d40faafd1a460b8f3b4992cd4f63ead386b5106cd19ad3"
    # With the base model's safety numbers in the score (score_base with safety_check), their digest is in it too:
    # a new value, deliberately; a score without them keeps the value above, so earlier scores stay readable.
    with_safety = evaluation.scoring_digest(evaluation.Scoring([], None, encoded, samples), 64, safety_digest="ab")
    assert with_safety == "3e52c6806880e7dbe475d4bc3eb07ee8d1092b91363b4d54e8d2b488373899a9"


SAFETY_DIGEST = "0" * 64


def _write_score(folder: Path, scoring, safety_digest: str | None, digest_safety: str | None = "same") -> Path:
    """A base_score.json as score_base writes it; ``digest_safety`` "same": the digest covers the stored safety."""
    safety = None
    if safety_digest is not None:
        rates = {"refusal_rate": 0.75, "over_refusal_rate": 0.25}
        safety = {"digest": safety_digest, "max_new_tokens": 16, "rates": rates, "answers": [{"id": "h1"}]}
        digest_safety = safety_digest if digest_safety == "same" else digest_safety
    else:
        digest_safety = None
    score = {
        "metrics": {"loss": 1.0},
        "answers": ["Hello"],
        "safety": safety,
        "digest": evaluation.scoring_digest(scoring, 64, digest_safety),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / evaluation.BASE_SCORE).write_text(json.dumps(score), encoding="utf-8")
    return folder


@pytest.fixture
def scoring():
    samples = [{"prompt": [{"role": "user", "content": "Hi"}], "reference": "Hello"}]
    return evaluation.Scoring([], None, [([1, 2, 3], [0, 1, 1])], samples)


def test_a_base_score_with_safety_gives_its_numbers_only_for_the_same_safety_digest(scoring, tmp_path):
    folder = _write_score(tmp_path, scoring, SAFETY_DIGEST)
    found = evaluation.load_base_score(folder, scoring, 64, SAFETY_DIGEST)
    assert found.metrics == {"loss": 1.0} and found.answers == ["Hello"]
    assert found.safety["rates"] == {"refusal_rate": 0.75, "over_refusal_rate": 0.25}
    # evaluate without safety_check: the validation scores still count, the safety numbers are not handed out.
    assert evaluation.load_base_score(folder, scoring, 64).safety is None
    # Another safety set or safety_max_new_tokens: refused, naming what to do.
    with pytest.raises(evaluation.EvalError, match="base model's safety on another safety set, safety_max_new_tok"):
        evaluation.load_base_score(folder, scoring, 64, "1" * 64)
    # The validation part still decides first.
    with pytest.raises(evaluation.EvalError, match="computed on other validation chats"):
        evaluation.load_base_score(folder, scoring, 65, SAFETY_DIGEST)


def test_a_base_score_without_safety_is_used_and_says_so_and_its_digest_covers_whether_safety_was_measured(
    scoring, tmp_path
):
    without = evaluation.load_base_score(_write_score(tmp_path / "without", scoring, None), scoring, 64, SAFETY_DIGEST)
    assert without.metrics == {"loss": 1.0} and without.safety is None  # evaluate measures the base's safety itself
    # Safety numbers added to a score whose digest did not cover them (or covers other ones): refused.
    for name, covered in (("added", None), ("other", "1" * 64)):
        folder = _write_score(tmp_path / name, scoring, SAFETY_DIGEST, digest_safety=covered)
        with pytest.raises(evaluation.EvalError, match="computed on other validation chats"):
            evaluation.load_base_score(folder, scoring, 64, SAFETY_DIGEST)


def test_batched_scoring_equals_one_chat_at_a_time(tiny_llama_dir, validation):
    from chatft.model_source import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    encoded = evaluation.encode(tokenizer, evaluation.load_chats(validation), 128)
    assert len({len(ids) for ids, _ in encoded}) > 1, "chats of different lengths, so batches are padded"
    model = load_causal_lm(tiny_llama_dir, dtype="fp32").eval()
    one = evaluation.score(model, encoded, batch_size=1)
    batched = evaluation.score(model, encoded, batch_size=4)
    assert batched["assistant_tokens"] == one["assistant_tokens"]
    assert batched["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert batched["token_accuracy"] == pytest.approx(one["token_accuracy"], abs=1 / one["assistant_tokens"])


def test_batched_greedy_answers_equal_one_prompt_at_a_time(tiny_llama_dir, validation):
    from chatft.model_source import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_dir)
    prompts = [s["prompt"] for s in evaluation.samples(evaluation.load_chats(validation), 4)]
    model = load_causal_lm(tiny_llama_dir, dtype="fp32").eval()
    one = evaluation.greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=1)
    assert evaluation.greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=4) == one


def test_generation_stops_at_the_end_of_turn_token(tiny_phi3_dir, tiny_llama_dir):
    """Phi-3 ends a turn with <|end|>, not with its eos <|endoftext|>: greedy decoding must stop there."""
    import torch

    from chatft.model_source import end_of_turn_token_id, load_causal_lm, load_tokenizer

    llama = load_tokenizer(tiny_llama_dir)
    assert llama.convert_ids_to_tokens(end_of_turn_token_id(llama)) == "<|im_end|>"
    tokenizer = load_tokenizer(tiny_phi3_dir)
    end = end_of_turn_token_id(tokenizer)
    assert tokenizer.convert_ids_to_tokens(end) == "<|end|>" and end != tokenizer.eos_token_id

    model = load_causal_lm(tiny_phi3_dir, dtype="fp32").eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # as in a checkpoint that lists only its eos
    # An output layer that makes <|end|> the greedy choice at every step.
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[end] = 10.0
    model.lm_head = head
    new_tokens = []
    generate = model.generate

    def counting_generate(**kwargs):
        output = generate(**kwargs)
        new_tokens.append(output.shape[1] - kwargs["input_ids"].shape[1])
        return output

    model.generate = counting_generate
    prompts = [[{"role": "user", "content": "Question?"}]]
    assert evaluation.greedy_answers(model, tokenizer, prompts, max_new_tokens=16) == [""]
    assert new_tokens == [1]  # stopped right after <|end|>, not 16 tokens later


def test_models_load_on_the_device_and_dtype_of_the_one_policy(tiny_llama_dir, monkeypatch):
    """evaluate and score_base take device and dtype from chatft.devices, as finetune and the endpoint do."""
    import torch

    from chatft import devices

    monkeypatch.setattr(devices, "pick_device", lambda: "cpu")
    model = evaluation.load_model(str(tiny_llama_dir))
    assert model.device.type == "cpu" and model.dtype == torch.float32 and not model.training
