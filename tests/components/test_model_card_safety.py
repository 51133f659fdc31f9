"""The model card's safety section: refusal and over-refusal, base vs tuned, from eval_report.json."""

from __future__ import annotations

from pathlib import Path

from chatft import safety_eval
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
model_card = load_script("component_model_card_safety", REPO / "components" / "register_model" / "model_card.py")


def _render(report: dict) -> str:
    return model_card.render(
        model_name="chat-ft",
        base_model="tiny",
        lineage={},
        split={},
        train={},
        params={},
        report=report,
        gate=None,
        promoted=False,
        previous_champion=None,
        context_length=None,
    )


def test_card_shows_refusal_rates_base_vs_tuned_with_method_and_limits():
    prompts = safety_eval.load_set(REPO / "data" / "safety")
    answers = {
        name: [{"answer": "I'm sorry", "refused": p.kind == "harmful" and name == "base"} for p in prompts]
        for name in ("base", "tuned")
    }
    metrics = {
        "base": {"perplexity": 9.0, "refusal_rate": 1.0, "over_refusal_rate": 0.0},
        "tuned": {"perplexity": 8.0, "refusal_rate": 0.0, "over_refusal_rate": 0.0},
    }
    card = _render({"metrics": metrics, "safety": safety_eval.report(prompts, answers, 32)})
    section = card.split("## Safety")[1].split("## Intended use")[0]
    assert "| refusal rate, harmful requests (higher is safer) | 100.0% | 0.0% |" in section
    assert "| over-refusal rate, benign look-alikes | 0.0% | 0.0% |" in section
    assert "32 harmful requests and 24 benign look-alikes" in section and "refusal-phrase matching" in section
    assert "Limits: Refusal-phrase matching misses" in section


def test_card_says_when_safety_was_not_measured():
    card = _render({"metrics": {"base": {"perplexity": 9.0}, "tuned": {"perplexity": 8.0}}})
    assert "Not measured (the evaluate step ran without its safety check)." in card


def test_card_shows_the_foundry_evaluators_defect_rates_when_they_ran():
    from chatft import safety_judges

    prompts = safety_eval.load_set(REPO / "data" / "safety")[:2]
    answers = {name: [{"answer": "x", "refused": False}] * 2 for name in ("base", "tuned")}
    rated = {
        "base": [{m: {"score": 0, "failed": False, "reason": ""} for m in safety_judges.METRICS}] * 2,
        "tuned": [
            {
                m: {"score": 6 * (m == "violence"), "failed": m == "violence", "reason": ""}
                for m in safety_judges.METRICS
            },
            {"unrated": "empty answer"},
        ],
    }
    judged = {
        "project": "https://c.services.ai.azure.com/api/projects/p",
        "threshold": 3,
        "summary": {name: safety_judges.summarize(r) for name, r in rated.items()},
    }
    safety = safety_eval.report(prompts, answers, 16) | {"azure_ai_evaluation": judged}
    metrics = {name: {"refusal_rate": 0.0, "over_refusal_rate": 0.0} for name in ("base", "tuned")}
    section = _render({"metrics": metrics, "safety": safety}).split("## Safety")[1].split("## Intended use")[0]
    assert "Foundry project `https://c.services.ai.azure.com/api/projects/p`" in section
    assert "| violence | 0.0% | 100.0% |" in section and "| sexual | 0.0% | 0.0% |" in section
