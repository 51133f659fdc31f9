"""score_base.py run for real on a tiny Llama: it scores the base model exactly as evaluate would, and evaluate
reuses that score only when it was computed on the same inputs (the shared scoring: tests/test_evaluation.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script, snapshot_component
from tests.helpers.training import cli_flags

REPO = Path(__file__).resolve().parents[2]
NAMES = ("score_base", "evaluate")
pytestmark = pytest.mark.usefixtures("mlflow_env")

score_base = load_script("component_score_base", REPO / "components" / "score_base" / "score_base.py")
evaluate = load_script("component_evaluate_for_score_base", REPO / "components" / "evaluate" / "evaluate.py")


@pytest.fixture(scope="module")
def validation(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("validation")
    write_jsonl(folder / "validation.jsonl", make_conversations(7, seed=2))
    return folder


def flags(**values) -> list[str]:
    return cli_flags(values)


@pytest.fixture(scope="module")
def tuned(tiny_llama_dir, tmp_path_factory) -> Path:
    """A second folder of the same weights, so that which model evaluate loads shows in the paths."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("tuned") / "model"))


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """The paths models are loaded from for scoring (chatft.evaluation.load_model, evaluate's and score_base's)."""
    paths = []
    load_model = evaluate.evaluation.load_model
    monkeypatch.setattr(evaluate.evaluation, "load_model", lambda path: paths.append(str(path)) or load_model(path))
    return paths


COMMON = {"max_seq_length": 128, "num_generation_samples": 2, "max_new_tokens": 6}


def run_score_base(base: Path, validation: Path, out: Path, **extra) -> dict:
    values = {"base_model": base, "validation_data": validation, "base_score": out, **COMMON, **extra}
    return score_base.main(score_base.parse_args(flags(**values)))


def run_evaluate(base: Path, tuned: Path, validation: Path, out: Path, **extra) -> dict:
    values = {"base_model": base, "tuned_model": tuned, "validation_data": validation, **COMMON, **extra}
    return evaluate.main(evaluate.parse_args(flags(eval_report=out / "report", quality_gate=out / "gate", **values)))


def test_the_base_score_is_what_evaluate_measures_itself_and_evaluate_uses_it(
    tiny_llama_dir, tuned, validation, tmp_path, loaded
):
    score = run_score_base(tiny_llama_dir, validation, tmp_path / "base")
    assert json.loads((tmp_path / "base" / "base_score.json").read_text())["digest"] == score["digest"]
    assert len(score["answers"]) == 2 and score["metrics"]["assistant_tokens"] > 0
    assert set(score["safety"]["rates"]) == {"refusal_rate", "over_refusal_rate"}  # safety_check is on by default

    loaded.clear()  # score_base loads through the same chatft.evaluation
    own = run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "own")
    assert loaded == [str(tiny_llama_dir), str(tuned)]
    loaded.clear()
    reused = run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "reused", base_score=tmp_path / "base")
    assert loaded == [str(tuned)]  # the base model's scores and safety numbers all came from score_base
    assert reused["metrics"]["base"] == pytest.approx(own["metrics"]["base"])
    assert reused["metrics"]["base"]["refusal_rate"] == score["safety"]["rates"]["refusal_rate"]
    assert [s["base"] for s in reused["samples"]] == [s["base"] for s in own["samples"]]
    assert [a["base"] for a in reused["safety"]["answers"]] == [a["base"] for a in own["safety"]["answers"]]
    assert reused["metrics"]["base"]["perplexity"] == pytest.approx(score["metrics"]["perplexity"])

    # A base score of other inputs is refused, naming what to do, never silently compared.
    with pytest.raises(evaluate.EvalError, match="base_score: .*computed on other validation chats, max_seq_length"):
        run_evaluate(
            tiny_llama_dir, tuned, validation, tmp_path / "other", base_score=tmp_path / "base", max_new_tokens=7
        )
    with pytest.raises(evaluate.EvalError, match="base_score: .*base_score.json not found"):
        run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "missing", base_score=tmp_path)


def test_safety_numbers_of_another_safety_setting_are_refused_and_a_score_without_them_is_measured(
    tiny_llama_dir, tuned, validation, tmp_path, loaded
):
    run_score_base(tiny_llama_dir, validation, tmp_path / "base", safety_max_new_tokens=8)
    with pytest.raises(evaluate.EvalError, match="base model's safety on another safety set, safety_max_new_tokens"):
        run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "other", base_score=tmp_path / "base")
    # Without the safety check evaluate needs no safety numbers: the validation scores still count.
    off = run_evaluate(
        tiny_llama_dir, tuned, validation, tmp_path / "off", base_score=tmp_path / "base", safety_check="false"
    )
    assert "refusal_rate" not in off["metrics"]["base"] and off["safety"] is None

    # score_base without the safety check: evaluate asks the base model the safety set itself, as without base_score.
    score = run_score_base(tiny_llama_dir, validation, tmp_path / "plain", safety_check="false")
    assert score["safety"] is None
    loaded.clear()
    measured = run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "measured", base_score=tmp_path / "plain")
    assert loaded == [str(tiny_llama_dir), str(tuned)]
    own = run_evaluate(tiny_llama_dir, tuned, validation, tmp_path / "own")
    assert measured["metrics"]["base"] == pytest.approx(own["metrics"]["base"])


def test_the_safety_inputs_are_evaluates():
    """The pipeline passes evaluate's values; the specs agree on types, ranges and defaults (tests/pipelines/)."""
    import yaml

    specs = {name: yaml.safe_load((REPO / "components" / name / "component.yml").read_text()) for name in NAMES}
    for name in ("safety_check", "safety_data", "safety_max_new_tokens"):
        ours, theirs = specs["score_base"]["inputs"][name], specs["evaluate"]["inputs"][name]
        assert {k: v for k, v in ours.items() if k != "description"} == {
            k: v for k, v in theirs.items() if k != "description"
        }, name
    assert "../../data/safety" in specs["score_base"]["additional_includes"]


def test_the_step_runs_from_its_snapshot_as_the_pipeline_runs_it(tiny_llama_dir, validation, tmp_path):
    """additional_includes bring chatft and the safety set beside the script; nothing comes from the repository."""
    snapshot = snapshot_component(REPO / "components" / "score_base", tmp_path / "snapshot")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "score_base.py"] + flags(
        base_model=tiny_llama_dir, validation_data=validation, base_score=tmp_path / "out", num_generation_samples=0
    )
    done = subprocess.run(command, cwd=snapshot, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads((tmp_path / "out" / "base_score.json").read_text())
    assert found["answers"] == [] and found["safety"]["rates"]  # the shipped safety set came with the snapshot
