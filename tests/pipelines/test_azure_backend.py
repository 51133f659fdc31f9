"""Azure submission, offline: the dry-run YAML and plan, and the call sequence against a recording fake MLClient.

The fake (tests/helpers/fake_azure.py) stands in for azure.ai.ml.MLClient, which cannot reach Azure from
CI: it records calls and returns objects shaped like the SDK's. The pipeline, data, environment and component
objects it receives are the real ones, validated here with the SDK.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import azure_backend
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.fake_azure import FakeMLClient

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"
COMPONENTS = [
    "prep_data",
    "validate_chat_jsonl",
    "finetune",
    "score_base",
    "evaluate",
    "register_model",
    "deploy_endpoint",
]
ENVIRONMENTS = ["chatft-cpu:1", "chatft-inference:1", "chatft-train:1"]


def submit(client, tmp_path, data: Path | None = None, dry_run: bool = False, **options) -> int:
    options = azure_backend.SubmitOptions(data=str(data) if data else None, **options)
    return azure_backend.submit(
        load_settings(AZURE), dry_run=dry_run, output_root=tmp_path / "out", ml_client=client, options=options
    )


@pytest.fixture
def chats(tmp_path) -> Path:
    """A folder of chat JSONL in two files."""
    records = make_conversations(30)
    write_jsonl(tmp_path / "chats" / "a.jsonl", records[:20])
    write_jsonl(tmp_path / "chats" / "more" / "b.jsonl", records[20:])
    return tmp_path / "chats"


def test_submit_checks_quota_registers_what_is_missing_then_submits_and_streams(tmp_path, capsys):
    client = FakeMLClient()
    assert submit(client, tmp_path) == 0
    names = client.sequence()
    # Preflight first (nothing is created before it passes), then environments, components, the job.
    assert names[:2] == ["compute.list_sizes", "compute.list_usage"]
    assert names[-3:] == ["jobs.create_or_update", "jobs.stream", "jobs.get"]
    assert [c for c in client.creations() if c.startswith("environments")] == [
        f"environments.create_or_update({e})" for e in ENVIRONMENTS
    ]
    assert [c.split("(")[1].split(":")[0] for c in client.creations() if c.startswith("components")] == COMPONENTS
    assert not any(name.startswith("data.") for name in names), "a Hugging Face dataset has no local data to register"
    (job,) = client.submitted
    assert job._validate().passed
    assert job.experiment_name == "chat-finetune"
    assert job.jobs["tuned"].compute == "gpu-a100"
    # Every step runs the registered component, by reference.
    assert {node.component.id.rsplit("/components/", 1)[1].split("/")[0] for node in job.jobs.values()} == set(
        COMPONENTS
    )
    out = capsys.readouterr().out
    assert "https://ml.azure.com/runs/job-123" in out
    assert "Hugging Face dataset HuggingFaceH4/ultrachat_200k" in out and "no local data to register" in out


def test_registered_environments_are_created_from_the_specs_with_a_content_tag(tmp_path):
    from azure.ai.ml.entities import Environment

    client = FakeMLClient()
    assert submit(client, tmp_path) == 0
    environments = [a for a in client.created if isinstance(a, Environment)]
    assert sorted(f"{e.name}:{e.version}" for e in environments) == ENVIRONMENTS
    train = next(e for e in environments if e.name == "chatft-train")
    assert train.image.startswith("mcr.microsoft.com/azureml/") and train.conda_file
    assert len(train.tags[azure_backend.CONTENT_TAG]) == 64


def test_local_data_is_registered_once_under_its_fingerprint_and_the_job_reads_that_version(tmp_path, chats):
    client = FakeMLClient()
    assert submit(client, tmp_path, data=chats) == 0
    fingerprint, records = azure_backend.data_fingerprint(chats)
    version = fingerprint[: azure_backend.VERSION_DIGITS]
    assert records == 30
    assert "data.get" in client.sequence()
    assert f"data.create_or_update(chatft-chat-data:{version})" in client.creations()
    (data,) = [a for a in client.created if a.name == "chatft-chat-data"]
    assert data.type == "uri_folder" and data.tags[azure_backend.FINGERPRINT_TAG] == fingerprint
    assert client.uploads[f"chatft-chat-data:{version}"] == ["a.jsonl", "more/b.jsonl"]
    (job,) = client.submitted
    assert job.inputs.raw_data.path == f"azureml:chatft-chat-data:{version}"
    assert "hf_dataset" not in job.jobs["splits"].inputs or job.jobs["splits"].inputs.hf_dataset._data is None

    # Same data again: only the lookup, no second upload.
    client.calls.clear()
    assert submit(client, tmp_path, data=chats) == 0
    assert not [c for c in client.creations() if c.startswith("data.")]
    assert not [c for c in client.creations() if c.startswith(("components.", "environments."))]


def test_new_records_make_a_new_data_version(tmp_path, chats):
    before, _ = azure_backend.data_fingerprint(chats)
    write_jsonl(chats / "c.jsonl", make_conversations(1, seed=99))
    after, records = azure_backend.data_fingerprint(chats)
    assert after != before and records == 31

    client = FakeMLClient()
    client.data.add("chatft-chat-data", before[: azure_backend.VERSION_DIGITS])
    assert submit(client, tmp_path, data=chats) == 0
    assert f"data.create_or_update(chatft-chat-data:{after[: azure_backend.VERSION_DIGITS]})" in client.creations()


def test_fingerprint_ignores_file_layout_and_order(tmp_path, chats):
    """The fingerprint is over the set of records: the same chats in one file, reordered, give the same version."""
    records = make_conversations(30)
    write_jsonl(tmp_path / "flat" / "all.jsonl", list(reversed(records)))
    assert azure_backend.data_fingerprint(tmp_path / "flat") == azure_backend.data_fingerprint(chats)


@pytest.mark.usefixtures("mlflow_env")
def test_fingerprint_is_the_one_prep_data_writes_to_split_info(tmp_path, chats):
    """So a model's split_info.json names the data asset version it was trained on."""
    prep = azure_backend._prep_data()
    out = tmp_path / "prep"
    args = prep.parse_args(
        ["--raw_data", str(chats)] + [f"--{o}={out / o}" for o in ("train_data", "validation_data", "split_info")]
    )
    assert prep.main(args) == 0
    split_info = json.loads((out / "split_info" / "split_info.json").read_text())
    assert azure_backend.data_fingerprint(chats)[0] == split_info["fingerprint"]


def test_a_single_file_is_registered_as_a_folder_holding_it(tmp_path):
    file = write_jsonl(tmp_path / "one.jsonl", make_conversations(5))
    client = FakeMLClient()
    assert submit(client, tmp_path, data=file) == 0
    (uploaded,) = client.uploads.values()
    assert uploaded == ["one.jsonl"]


def test_missing_or_empty_data_is_explained_before_anything_is_contacted(tmp_path, capsys):
    client = FakeMLClient()
    assert submit(client, tmp_path, data=tmp_path / "nope") == azure_backend.EXIT_INVALID
    assert client.calls == []
    assert "training data:" in capsys.readouterr().err
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.jsonl").write_text("\n\n")
    assert submit(client, tmp_path, data=tmp_path / "blank") == azure_backend.EXIT_INVALID
    assert "has no records" in capsys.readouterr().err


def test_unchanged_components_are_reused_and_changed_code_gets_a_new_version(tmp_path):
    settings = load_settings(AZURE)
    first = azure_backend.plan_submission(settings)
    again = azure_backend.plan_submission(settings)
    assert [c.version for c in first.components] == [c.version for c in again.components]
    assert all(c.version.startswith(f"{c.spec_version}.") for c in first.components)

    client = FakeMLClient()
    for component in first.components:
        client.components.add(component.name, component.version)
    assert submit(client, tmp_path) == 0
    assert not [c for c in client.creations() if c.startswith("components.")]


def test_an_environment_registered_with_other_content_stops_the_submission(tmp_path, capsys):
    client = FakeMLClient()
    client.environments.add("chatft-train", "1", tags={azure_backend.CONTENT_TAG: "0" * 64})
    assert submit(client, tmp_path) == azure_backend.EXIT_INVALID
    err = capsys.readouterr().err
    assert "environments/train/environment.yml" in err and "bump `version`" in err
    assert "jobs.create_or_update" not in client.sequence()


def test_zero_gpu_quota_stops_before_anything_is_created(tmp_path, capsys):
    quota = {"standardNCADSA100v4Family": (0, 0), "standardDSv3Family": (24, 0), "standardNCSv3Family": (24, 0)}
    client = FakeMLClient(quota=quota)
    assert submit(client, tmp_path) == azure_backend.EXIT_PREFLIGHT
    assert client.sequence() == ["compute.list_sizes", "compute.list_usage"]
    captured = capsys.readouterr()
    assert "standardNCADSA100v4Family: zero quota in eastus2 (need 24 vCPUs" in captured.out
    assert "Preflight failed: nothing was created or submitted." in captured.err


def test_no_permission_to_read_quota_is_said_and_the_submission_goes_on(tmp_path, capsys):
    client = FakeMLClient(quota_forbidden=True)
    assert submit(client, tmp_path) == 0
    assert "not checked: no permission to read quota" in capsys.readouterr().out
    assert "jobs.create_or_update" in client.sequence()


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_submit_exits_non_zero_when_the_pipeline_fails(tmp_path, status):
    assert submit(FakeMLClient(final_status=status), tmp_path) == 1


def test_no_stream_returns_after_submitting(tmp_path):
    client = FakeMLClient()
    assert submit(client, tmp_path, stream=False) == 0
    assert client.sequence()[-1] == "jobs.create_or_update"


def test_dry_run_writes_yaml_that_the_sdk_loads_and_validates_and_contacts_nothing(tmp_path, chats, capsys):
    from azure.ai.ml import load_job

    client = FakeMLClient()
    assert submit(client, tmp_path, data=chats, dry_run=True) == 0
    assert client.calls == []
    folder = tmp_path / "out" / "azure"
    reloaded = load_job(folder / "pipeline_job.yml")
    assert reloaded._validate().passed
    assert reloaded.jobs["tuned"].compute == "gpu-a100"
    assert "azureml://registries/azureml/models/Phi-3-mini-4k-instruct" in (folder / "pipeline_job.yml").read_text()
    fingerprint, _ = azure_backend.data_fingerprint(chats)
    version = fingerprint[: azure_backend.VERSION_DIGITS]
    assert f"path: azureml:chatft-chat-data:{version}" in (folder / "pipeline_job.yml").read_text()
    assert reloaded.inputs["raw_data"].path.endswith(f"chatft-chat-data:{version}")  # the SDK drops "azureml:"

    plan = json.loads((folder / "submission_plan.json").read_text())
    assert plan["data_asset"] | {"from": None} == {
        "name": "chatft-chat-data",
        "version": version,
        "fingerprint": fingerprint,
        "records": 30,
        "from": None,
        "registered_only_if_missing": True,
    }
    assert [c["name"] for c in plan["components"]] == COMPONENTS
    assert [f"{e['name']}:{e['version']}" for e in plan["environments"]] == ENVIRONMENTS
    assert plan["compute"]["gpu_cluster"] == "gpu-a100"
    assert plan["schedule"] == {"name": "chatft-weekly", "cron": "0 3 * * 1", "time_zone": "UTC"}
    out = capsys.readouterr().out
    assert "not checked: dry run" in out and "Cost estimate" in out


def test_dry_run_of_the_hugging_face_preset_says_there_is_nothing_to_register(tmp_path):
    assert submit(FakeMLClient(), tmp_path, dry_run=True) == 0
    plan = json.loads((tmp_path / "out" / "azure" / "submission_plan.json").read_text())
    assert "HuggingFaceH4/ultrachat_200k" in plan["data_asset"]["note"]


def test_missing_workspace_config_is_explained_without_any_network(tmp_path, monkeypatch):
    for name in azure_backend.WORKSPACE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(azure_backend.WorkspaceConfigError, match=r"\.azureml/config\.json .*AZURE_SUBSCRIPTION_ID"):
        azure_backend.workspace_client(project_root=tmp_path)


def test_make_submit_flags_reach_the_submission(tmp_path, chats):
    """`make submit DRY_RUN=1 DATA=...` = pipelines.run --backend azure --dry-run --data ...: the flags are wired."""
    from pipelines import run

    args = run.parse_args(["--backend", "azure", "--dry-run", "--output-root", str(tmp_path), "--data", str(chats)])
    assert run.main(args) == 0
    plan = json.loads((tmp_path / "azure" / "submission_plan.json").read_text())
    assert plan["data_asset"]["records"] == 30
