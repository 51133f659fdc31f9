"""pipelines/run.py: the report of where a run's time went, and how its errors reach the exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.local_backend import PipelineResult, StepResult
from pipelines.run import time_table


def test_the_time_table_lists_steps_slowest_first_with_their_share_and_marks_reused_ones():
    steps = [
        StepResult("splits", "reused", 0.0),
        StepResult("tuned", "completed", 150.0),
        StepResult("evaluation", "completed", 40.0),
    ]
    table = time_table(PipelineResult("run", steps, {}, 200.0)).splitlines()
    assert table[0] == "Where the time went:"
    assert table[1].split() == ["tuned", "150.0", "s", "75%"]
    assert table[2].split() == ["evaluation", "40.0", "s", "20%"]
    assert table[3].split() == ["splits", "reused"]
    assert table[4].split()[-3:] == ["10.0", "s", "5%"]  # the backend's own time: the rest of the 200 s


def test_a_bad_setting_raises_a_usage_error_and_the_entry_point_exits_2_naming_it():
    from pipelines import run
    from pipelines.settings import PROJECT_ROOT, SettingsError

    with pytest.raises(SettingsError, match="expected STEP.INPUT=VALUE"):
        run.main(run.parse_args(["--set", "learning_rate=1e-4"]))
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.run", "--set", "learning_rate=1e-4"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("pipelines.run: --set 'learning_rate=1e-4': expected STEP.INPUT=VALUE")


def test_a_pipeline_the_sdk_rejects_is_a_usage_error_before_anything_runs(tmp_path, monkeypatch):
    from chatft.errors import UsageError
    from pipelines import run

    monkeypatch.setattr(run, "prepare_base_model", lambda settings, output_root: str(tmp_path / "model"))
    monkeypatch.setattr(run.sdk_private, "validation_errors", lambda job: "jobs.tuned: compute is required")
    with pytest.raises(UsageError, match="failed azure-ai-ml validation:\njobs.tuned: compute is required"):
        run.main(run.parse_args(["--output-root", str(tmp_path / "outputs")]))
    assert not (tmp_path / "outputs" / "steps").exists()
