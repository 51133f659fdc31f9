"""Following a submitted run (pipelines/follow.py): the verdict and exit code, against the recording fake MLClient.

``jobs.stream`` raising ``JobException`` on a failed run is the SDK's own behaviour (azure-ai-ml 1.35.2,
``_job_ops_helper.stream_logs_until_completion``); the fake raises the SDK's own exception class.
"""

from __future__ import annotations

import json

import pytest

from pipelines import follow
from tests.helpers.fake_azure import FakeMLClient


def failing_stream(client: FakeMLClient) -> FakeMLClient:
    from azure.ai.ml.exceptions import ErrorCategory, ErrorTarget, JobException

    def stream(name):
        client.record("jobs.stream", name)
        raise JobException(
            message='Exception : \n {"code": "UserError", "message": "finetune: CUDA out of memory"} ',
            target=ErrorTarget.JOB,
            no_personal_data_message="Exception raised on failed job.",
            error_category=ErrorCategory.SYSTEM_ERROR,
        )

    client.jobs.stream = stream
    return client


def test_a_completed_run_exits_zero(capsys):
    client = FakeMLClient(final_status="Completed")
    assert follow.follow_job(client, "job-123") == 0
    assert client.sequence() == ["jobs.stream", "jobs.get"]
    assert "job-123 completed" in capsys.readouterr().out


def test_a_failed_run_is_a_clear_exit_1_not_a_traceback(capsys):
    client = failing_stream(FakeMLClient(final_status="Failed"))
    assert follow.follow_job(client, "job-123") == 1
    err = capsys.readouterr().err
    assert "Pipeline job-123 ended Failed" in err and "CUDA out of memory" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("status", ["Running", "Canceled"])
def test_a_run_that_did_not_complete_exits_1(status, capsys):
    assert follow.follow_job(FakeMLClient(final_status=status), "job-9") == 1
    err = capsys.readouterr().err
    assert ("make follow JOB=job-9" in err) == (status == "Running")


def test_follow_reads_the_run_that_submit_recorded(tmp_path):
    from types import SimpleNamespace

    submitted = SimpleNamespace(name="job-77", studio_url="https://ml.azure.com/runs/job-77")
    path = follow.record_submission(tmp_path, submitted, "chatft")
    assert json.loads(path.read_text()) == {
        "name": "job-77",
        "studio_url": "https://ml.azure.com/runs/job-77",
        "experiment": "chatft",
    }
    client = FakeMLClient()
    assert follow.main(follow.parse_args(["--output-root", str(tmp_path)]), ml_client=client) == 0
    assert client.payloads("jobs.stream") == ["job-77"]


def test_nothing_recorded_and_no_job_named_is_a_clear_error(tmp_path, capsys):
    client = FakeMLClient()
    assert follow.main(follow.parse_args(["--output-root", str(tmp_path)]), ml_client=client) == 2
    assert client.calls == [] and "pass --job NAME" in capsys.readouterr().err


def test_submit_without_streaming_records_the_run_for_a_later_step(tmp_path):
    from pipelines import azure_backend
    from pipelines.settings import PROJECT_ROOT, load_settings

    client = FakeMLClient()
    settings = load_settings(PROJECT_ROOT / "pipelines" / "config" / "azure.yaml")
    options = azure_backend.SubmitOptions(stream=False)
    assert azure_backend.submit(settings, dry_run=False, output_root=tmp_path, ml_client=client, options=options) == 0
    assert "jobs.stream" not in client.sequence()
    assert json.loads((tmp_path / follow.SUBMITTED_FILE).read_text())["name"] == "job-123"
