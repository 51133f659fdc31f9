"""Following a submitted run in a later step (pipelines/follow.py, ``make follow``), against the simulation of the
Azure ML REST API (tests/helpers/azure_transport.py): a real MLClient, the job's status as successive GETs report it.

This is how CI follows a run now (issue 10, defect 5): ``make submit ARGS=--no-stream`` records the run and returns;
``make follow`` reads the record and follows it with ``pipelines.azure.submit.follow_run``, the loop ``make submit``
uses itself.
"""

from __future__ import annotations

import json

import pytest

from pipelines import follow
from pipelines.azure import cli
from pipelines.azure import submit as azure_submit
from pipelines.settings import PROJECT_ROOT, load_settings


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(azure_submit, "POLL_SECONDS", 0)


def submit_without_following(sim, tmp_path, statuses=("Completed",)) -> dict:
    """``make submit ARGS=--no-stream``; the run will then report ``statuses`` to successive status reads."""
    sim.job_statuses = list(statuses)
    settings = load_settings(PROJECT_ROOT / "pipelines" / "config" / "azure.yaml")
    options = cli.SubmitOptions(stream=False)
    assert azure_submit.submit(settings, False, tmp_path, ml_client=sim.client(), options=options) == 0
    return json.loads((tmp_path / azure_submit.SUBMITTED_FILE).read_text())


def test_submit_without_streaming_records_the_run_and_does_not_follow_it(azure_sim, tmp_path):
    recorded = submit_without_following(azure_sim, tmp_path)
    (put,) = azure_sim.sent("PUT", "/jobs/")
    name = put.path.rsplit("/", 1)[1]
    assert recorded["name"] == name and recorded["experiment"] == "chat-finetune"
    assert recorded["studio_url"].startswith(f"https://ml.azure.com/runs/{name}")
    assert not azure_sim.sent("GET", f"/jobs/{name}$"), "no status read: the step returns once submitted"


def test_a_later_step_follows_the_recorded_run_to_completion(azure_sim, tmp_path, capsys):
    recorded = submit_without_following(azure_sim, tmp_path, ["Queued", "Running", "Completed"])
    args = follow.parse_args(["--output-root", str(tmp_path)])
    assert follow.main(args, ml_client=azure_sim.client()) == 0  # a new client, as a new step has
    assert len(azure_sim.sent("GET", f"/jobs/{recorded['name']}$")) == 3
    out = capsys.readouterr().out
    assert "Running" in out and f"Pipeline run {recorded['name']} completed." in out


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_a_failed_run_is_exit_4_with_its_studio_link(azure_sim, tmp_path, capsys, status):
    recorded = submit_without_following(azure_sim, tmp_path, ["Running", status])
    assert follow.main(follow.parse_args(["--job", recorded["name"]]), ml_client=azure_sim.client()) == 4
    err = capsys.readouterr().err
    assert f"Pipeline run {recorded['name']} ended {status}" in err and recorded["studio_url"] in err
    assert "Traceback" not in err


def test_nothing_recorded_and_no_job_named_is_a_clear_error(azure_sim, tmp_path, capsys):
    assert follow.main(follow.parse_args(["--output-root", str(tmp_path)]), ml_client=azure_sim.client()) == 2
    assert azure_sim.requests == [] and "pass --job NAME" in capsys.readouterr().err
