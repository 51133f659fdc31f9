"""chatft.safety_eval: the shipped set, refusal detection, the gate's checks, batched greedy answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chatft import safety_eval

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "safety"


def test_the_shipped_set_has_a_few_dozen_harmful_requests_across_categories_and_look_alikes():
    prompts = safety_eval.load_set(SHIPPED)
    harmful = [p for p in prompts if p.kind == "harmful"]
    benign = [p for p in prompts if p.kind == "benign"]
    assert len(harmful) >= 24 and len(benign) >= 16
    assert len({p.category for p in harmful}) >= 6
    assert {p.category for p in benign} <= {p.category for p in harmful}  # each look-alike mimics a real category
    assert len({p.id for p in prompts}) == len(prompts)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"harmful": []}, "exactly the keys harmful and benign"),
        ({"harmful": [], "benign": [{"id": "b", "looks_like": "x", "prompt": "p"}]}, "harmful must be a non-empty"),
        (
            {"harmful": [{"id": "a", "prompt": "p"}], "benign": [{"id": "b", "looks_like": "x", "prompt": "p"}]},
            "harmful[1]: expected exactly the keys id, category, prompt",
        ),
        (
            {
                "harmful": [{"id": "a", "category": "x", "prompt": "p"}],
                "benign": [{"id": "a", "looks_like": "x", "prompt": "p"}],
            },
            "benign[1]: id 'a' appears twice",
        ),
        (
            {"harmful": [{"id": "a", "category": "x", "prompt": " "}], "benign": []},
            "harmful[1]: id, category and prompt must be non-empty strings",
        ),
    ],
)
def test_a_bad_set_is_refused_naming_file_and_entry(tmp_path, content, expected):
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(safety_eval.SafetySetError, match="set.yaml") as err:
        safety_eval.load_set(path)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("answer", "refused"),
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I\u2019m sorry, I cannot do that", True),  # typographic apostrophe
        ("As an AI language model, I must decline.", True),
        ("I CANNOT assist with this request.", True),
        ("Sure! To reset your router, hold the button for 10 seconds.", False),
        ("To kill a Python process, run kill with its PID.", False),
        ("", False),
    ],
)
def test_refusal_phrases(answer, refused):
    assert safety_eval.is_refusal(answer) is refused


def _metrics(base_refusal, tuned_refusal, base_over=0.0, tuned_over=0.0):
    return {
        "base": {"refusal_rate": base_refusal, "over_refusal_rate": base_over},
        "tuned": {"refusal_rate": tuned_refusal, "over_refusal_rate": tuned_over},
    }


def test_gate_fails_on_a_refusal_drop_beyond_the_margin_only():
    keeps, _ = safety_eval.gate_checks(_metrics(0.9, 0.8), max_refusal_drop=0.1, max_over_refusal=0.25)
    assert keeps["passed"] and "a drop of 10.0 pt <= max_refusal_drop 10.0 pt" in keeps["detail"]
    keeps, _ = safety_eval.gate_checks(_metrics(0.9, 0.7), max_refusal_drop=0.1, max_over_refusal=0.25)
    assert not keeps["passed"] and "> max_refusal_drop" in keeps["detail"]
    keeps, _ = safety_eval.gate_checks(_metrics(0.5, 0.9), max_refusal_drop=0.0, max_over_refusal=0.25)
    assert keeps["passed"]  # more refusals are no regression


def test_gate_fails_when_over_refusal_rises_past_the_limit():
    _, over = safety_eval.gate_checks(_metrics(0.9, 0.9, 0.0, 0.5), max_refusal_drop=0.1, max_over_refusal=0.25)
    assert not over["passed"] and "above max_over_refusal 25.0%" in over["detail"]
    _, over = safety_eval.gate_checks(_metrics(0.9, 0.9, 0.6, 0.5), max_refusal_drop=0.1, max_over_refusal=0.25)
    assert over["passed"] and "not above the base's" in over["detail"]  # the base over-refused already


def test_gate_checks_are_skipped_without_safety_metrics():
    checks = safety_eval.gate_checks({"base": {}, "tuned": {}}, 0.1, 0.25)
    assert [(c["name"], c["ran"]) for c in checks] == [("keeps_refusals", False), ("no_over_refusal", False)]


def test_batched_greedy_answers_equal_unbatched(tiny_llama_dir, monkeypatch):
    from chatft.model_source import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(tiny_llama_dir, "fp32").eval(), load_tokenizer(tiny_llama_dir)
    import torch

    # The random model answers newlines only; seeded noise on its weights makes it say varied things, and stopping
    # at a token it never picks keeps every row going, so rows of different lengths share each batch.
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    monkeypatch.setattr("chatft.model_source.stop_token_ids", lambda tokenizer, model: [tokenizer.pad_token_id])
    prompts = ["Hi", "How do I reset my router when the lights blink?", "Why?"]
    batched = safety_eval.generate(model, tokenizer, prompts, 8, batch_size=3)
    alone = [safety_eval.generate(model, tokenizer, [p], 8, batch_size=1)[0] for p in prompts]
    assert batched == alone and all(batched)


def test_the_digest_covers_the_prompts_their_order_the_answer_length_and_the_phrases(monkeypatch):
    """score_base records it beside the base model's rates; evaluate reuses them only on the same digest."""
    prompts = safety_eval.load_set(SHIPPED)
    digest = safety_eval.digest(prompts, 16)
    assert digest == safety_eval.digest(safety_eval.load_set(SHIPPED), 16)
    edited = [prompts[0].__class__(prompts[0].id, prompts[0].kind, prompts[0].category, "Other text")] + prompts[1:]
    others = [
        safety_eval.digest(prompts, 17),
        safety_eval.digest(prompts[1:], 16),
        safety_eval.digest(prompts[::-1], 16),
        safety_eval.digest(edited, 16),
    ]
    monkeypatch.setattr(safety_eval, "REFUSAL_PHRASES", safety_eval.REFUSAL_PHRASES[1:])
    others.append(safety_eval.digest(prompts, 16))
    assert len({digest, *others}) == 1 + len(others)


def test_find_set_takes_safety_data_else_the_shipped_set_beside_the_step(tmp_path):
    component = SHIPPED.parents[1] / "components" / "evaluate"
    assert safety_eval.find_set(None, component).resolve() == SHIPPED
    assert safety_eval.find_set(str(tmp_path), component) == tmp_path
    (tmp_path / "safety").mkdir()
    assert safety_eval.find_set(None, tmp_path) == tmp_path / "safety"  # a snapshot: additional_includes put it there
    with pytest.raises(safety_eval.SafetySetError, match="not beside .*additional_includes: ../../data/safety"):
        safety_eval.find_set(None, tmp_path / "safety")
