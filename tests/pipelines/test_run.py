"""pipelines/run.py's report of where a run's time went."""

from __future__ import annotations

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
