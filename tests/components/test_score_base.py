"""score_base.py run for real on a tiny Llama: it scores the base model exactly as evaluate would, and evaluate
reuses that score only when it was computed on the same inputs (the shared scoring: tests/test_evaluation.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script, snapshot_component
from tests.helpers.training import cli_flags

REPO = Path(__file__).resolve().parents[2]
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
    """additional_includes bring chatft beside the script; nothing comes from the repository."""
    snapshot = snapshot_component(REPO / "components" / "score_base", tmp_path / "snapshot")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "score_base.py"] + flags(
        base_model=tiny_llama_dir, validation_data=validation, base_score=tmp_path / "out", num_generation_samples=0
    )
    done = subprocess.run(command, cwd=snapshot, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "base_score.json").read_text())["answers"] == []
