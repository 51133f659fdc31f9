"""chatft.evaluation: batched scoring and greedy answers match one at a time, answers stop at the end of turn, and
the digest of what was scored stays what cached score_base outputs recorded."""

from __future__ import annotations

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
