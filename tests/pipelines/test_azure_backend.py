"""Azure submission, offline: dry-run YAML, and the call sequence against a recording fake MLClient.

The fake stands in for azure.ai.ml.MLClient (Azure cannot be reached from CI); it records calls and
returns objects shaped like the SDK's. The pipeline object it receives is the real one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipelines import azure_backend
from pipelines.settings import PROJECT_ROOT, load_settings

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"


class RecordingJobs:
    def __init__(self, calls: list, final_status: str):
        self.calls = calls
        self.final_status = final_status

    def create_or_update(self, job, experiment_name=None):
        self.calls.append(("jobs.create_or_update", job, experiment_name))
        return SimpleNamespace(name="job-123", studio_url="https://ml.azure.com/runs/job-123")

    def stream(self, name):
        self.calls.append(("jobs.stream", name))

    def get(self, name):
        self.calls.append(("jobs.get", name))
        return SimpleNamespace(name=name, status=self.final_status)


class RecordingMLClient:
    """Records every call; no network. Same attribute shape as MLClient for what submit() uses."""

    def __init__(self, final_status: str = "Completed"):
        self.calls: list = []
        self.jobs = RecordingJobs(self.calls, final_status)


def test_submit_sends_the_validated_pipeline_then_streams_it(tmp_path, capsys):
    client = RecordingMLClient()
    code = azure_backend.submit(load_settings(AZURE), dry_run=False, output_root=tmp_path, ml_client=client)
    assert code == 0
    assert [call[0] for call in client.calls] == ["jobs.create_or_update", "jobs.stream", "jobs.get"]
    _, job, experiment = client.calls[0]
    assert experiment == "chat-finetune"
    assert job._validate().passed
    assert job.jobs["tuned"].compute == "gpu-a100"
    assert "https://ml.azure.com/runs/job-123" in capsys.readouterr().out


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_submit_exits_non_zero_when_the_pipeline_fails(tmp_path, status):
    client = RecordingMLClient(final_status=status)
    assert azure_backend.submit(load_settings(AZURE), dry_run=False, output_root=tmp_path, ml_client=client) == 1


def test_dry_run_writes_yaml_that_the_sdk_loads_back_and_submits_nothing(tmp_path):
    from azure.ai.ml import load_job

    client = RecordingMLClient()
    assert azure_backend.submit(load_settings(AZURE), dry_run=True, output_root=tmp_path, ml_client=client) == 0
    assert client.calls == []
    path = tmp_path / "azure" / "pipeline_job.yml"
    reloaded = load_job(path)
    assert reloaded.jobs["tuned"].compute == "gpu-a100"
    assert "azureml://registries/azureml/models/Phi-3-mini-4k-instruct" in path.read_text()


def test_missing_workspace_config_is_explained_without_any_network(tmp_path, monkeypatch):
    for name in azure_backend.WORKSPACE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(azure_backend.WorkspaceConfigError, match=r"\.azureml/config\.json .*AZURE_SUBSCRIPTION_ID"):
        azure_backend.workspace_client(project_root=tmp_path)
