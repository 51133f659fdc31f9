"""make submit, offline: the dry-run YAML and plan, and the REST requests a real MLClient sends to the simulation
of the Azure ML REST API (tests/helpers/azure_transport.py: a simulation, not Azure; its payloads follow the REST
spec's examples). The SDK's own serializers, upload code, pollers and deserializers run in every test here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.azure import cli, client, plan
from pipelines.azure import submit as azure_submit
from pipelines.finetune_pipeline import COMPONENT_NAMES
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.prep_runs import run_prep

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"
COMPONENTS = list(COMPONENT_NAMES)
ENVIRONMENTS = ["chatft-cpu", "chatft-inference", "chatft-train"]
# The version the spec registers (a change to the environment bumps it).
TRAIN_VERSION = str(
    yaml.safe_load((PROJECT_ROOT / "environments" / "train" / "environment.yml").read_text())["version"]
)
REGISTRY_MODEL = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/4"


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(azure_submit, "POLL_SECONDS", 0)


def submit(sim, tmp_path, data: Path | None = None, dry_run: bool = False, **options) -> int:
    options = cli.SubmitOptions(data=str(data) if data else None, **options)
    ml_client = None if sim is None else sim.client()
    return azure_submit.submit(
        load_settings(AZURE), dry_run=dry_run, output_root=tmp_path / "out", ml_client=ml_client, options=options
    )


def puts(sim, kind: str) -> list[str]:
    """``name/versions/v`` (or ``name``) of every PUT of ``kind`` (environments, data, components, jobs ...)."""
    return [r.path.split(f"/{kind}/", 1)[1] for r in sim.requests if r.method == "PUT" and f"{{ws}}/{kind}/" in r.path]


@pytest.fixture
def chats(tmp_path) -> Path:
    """A folder of chat JSONL in two files."""
    records = make_conversations(30)
    write_jsonl(tmp_path / "chats" / "a.jsonl", records[:20])
    write_jsonl(tmp_path / "chats" / "more" / "b.jsonl", records[20:])
    return tmp_path / "chats"


def test_submit_checks_quota_registers_what_is_missing_submits_and_follows_the_run(azure_sim, tmp_path, capsys):
    azure_sim.job_statuses = ["Queued", "Running", "Completed"]
    assert submit(azure_sim, tmp_path) == 0
    sequence = azure_sim.sequence()
    # Preflight first (nothing is created before it passes), then environments, components, the job.
    assert sequence[:3] == [
        "GET {ws}",
        f"GET /subscriptions/{azure_sim.client().subscription_id}/providers/Microsoft.MachineLearningServices"
        "/locations/eastus2/vmSizes",
        f"GET /subscriptions/{azure_sim.client().subscription_id}/providers/Microsoft.MachineLearningServices"
        "/locations/eastus2/usages",
    ]
    assert [p.split("/")[0] for p in puts(azure_sim, "environments")] == ENVIRONMENTS
    assert [p.split("/")[0] for p in puts(azure_sim, "components")] == COMPONENTS
    assert not puts(azure_sim, "data"), "a Hugging Face dataset has no local data to register"
    (job_path,) = puts(azure_sim, "jobs")
    assert sequence.index(f"PUT {{ws}}/jobs/{job_path}") > max(
        sequence.index(f"PUT {{ws}}/components/{p}") for p in puts(azure_sim, "components")
    )
    assert sequence[-3:] == [f"GET {{ws}}/jobs/{job_path}"] * 3  # followed until it completed
    # What the service receives: every step by reference to the component version just registered.
    (put,) = azure_sim.sent("PUT", "/jobs/")
    body = put.body["properties"]
    assert body["experimentName"] == "chat-finetune" and body["jobType"] == "Pipeline"
    assert body["jobs"]["tuned"]["computeId"].endswith("/computes/gpu-a100")
    registered = {p.split("/")[0]: p for p in puts(azure_sim, "components")}
    for node in body["jobs"].values():
        name = node["componentId"].split("/components/")[1].split("/")[0]
        assert node["componentId"].endswith(f"/components/{registered[name]}")
    assert body["inputs"]["base_model"] == {"uri": REGISTRY_MODEL, "jobInputType": "mlflow_model"}
    out = capsys.readouterr().out
    assert f"Submitted {job_path}: https://ml.azure.com/runs/{job_path}" in out
    assert f"{job_path}: Queued" in out and f"{job_path}: Running" in out and f"run {job_path} completed" in out
    assert "Hugging Face dataset HuggingFaceH4/ultrachat_200k" in out and "no local data to register" in out


def test_registered_environments_are_created_from_the_specs_with_a_content_tag(azure_sim, tmp_path):
    assert submit(azure_sim, tmp_path) == 0
    (put,) = azure_sim.sent("PUT", f"/environments/chatft-train/versions/{TRAIN_VERSION}$")
    body = put.body["properties"]
    assert body["image"].startswith("mcr.microsoft.com/azureml/") and "torch==2.13.0" in body["condaFile"]
    assert len(body["tags"][plan.CONTENT_TAG]) == 64


def test_local_data_is_uploaded_and_registered_once_under_its_fingerprint(azure_sim, tmp_path, chats):
    assert submit(azure_sim, tmp_path, data=chats) == 0
    fingerprint, records = plan.data_fingerprint(chats)
    version = fingerprint[: plan.VERSION_DIGITS]
    assert records == 30
    assert puts(azure_sim, "data") == [f"chatft-chat-data/versions/{version}"]
    (put,) = azure_sim.sent("PUT", "/data/")
    body = put.body["properties"]
    assert body["dataType"] == "uri_folder" and body["tags"][plan.FINGERPRINT_TAG] == fingerprint
    # The SDK uploaded the folder to the workspace's blob datastore; the asset points at it.
    uploaded = sorted(name.split("/chats/", 1)[1] for name in azure_sim.blobs if "/chats/" in name)
    assert uploaded == ["a.jsonl", "more/b.jsonl"]
    assert body["dataUri"].startswith("azureml://datastores/workspaceblobstore/paths/LocalUpload/")
    (job,) = azure_sim.sent("PUT", "/jobs/")
    raw_data = job.body["properties"]["inputs"]["raw_data"]
    assert raw_data["jobInputType"] == "uri_folder" and raw_data["uri"].endswith(
        f"/data/chatft-chat-data/versions/{version}"
    )

    # Same data again: the lookups find everything, nothing is uploaded or registered twice.
    azure_sim.requests.clear()
    assert submit(azure_sim, tmp_path, data=chats) == 0
    assert not puts(azure_sim, "data") and not puts(azure_sim, "components") and not puts(azure_sim, "environments")
    assert not [r for r in azure_sim.requests if "blob.core" in r.path]


def test_new_records_make_a_new_data_version(azure_sim, tmp_path, chats):
    before, _ = plan.data_fingerprint(chats)
    assert submit(azure_sim, tmp_path, data=chats) == 0
    write_jsonl(chats / "c.jsonl", make_conversations(1, seed=99))
    after, records = plan.data_fingerprint(chats)
    assert after != before and records == 31
    assert submit(azure_sim, tmp_path, data=chats) == 0
    assert puts(azure_sim, "data") == [
        f"chatft-chat-data/versions/{before[: plan.VERSION_DIGITS]}",
        f"chatft-chat-data/versions/{after[: plan.VERSION_DIGITS]}",
    ]


def test_fingerprint_ignores_file_layout_and_order(tmp_path, chats):
    """The fingerprint is over the set of records: the same chats in one file, reordered, give the same version."""
    records = make_conversations(30)
    write_jsonl(tmp_path / "flat" / "all.jsonl", list(reversed(records)))
    assert plan.data_fingerprint(tmp_path / "flat") == plan.data_fingerprint(chats)


@pytest.mark.usefixtures("mlflow_env")
def test_fingerprint_is_the_one_prep_data_writes_to_split_info(tmp_path, chats):
    """So a model's split_info.json names the data asset version it was trained on."""
    code, _, _, split_info = run_prep(tmp_path / "prep", "--raw_data", str(chats))
    assert code == 0
    assert plan.data_fingerprint(chats)[0] == split_info["fingerprint"]


def test_a_single_file_is_registered_as_a_folder_holding_it(azure_sim, tmp_path):
    file = write_jsonl(tmp_path / "one.jsonl", make_conversations(5))
    assert submit(azure_sim, tmp_path, data=file) == 0
    data_blobs = [name for name in azure_sim.blobs if name.endswith(".jsonl")]
    assert len(data_blobs) == 1 and data_blobs[0].endswith("/one.jsonl")


def test_missing_or_empty_data_is_explained_before_anything_is_contacted(azure_sim, tmp_path, capsys):
    assert submit(azure_sim, tmp_path, data=tmp_path / "nope") == cli.EXIT_INVALID
    assert azure_sim.requests == []
    assert "training data:" in capsys.readouterr().err
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.jsonl").write_text("\n\n")
    assert submit(azure_sim, tmp_path, data=tmp_path / "blank") == cli.EXIT_INVALID
    assert "has no records" in capsys.readouterr().err


def test_unchanged_components_are_reused_and_changed_code_gets_a_new_version(azure_sim, tmp_path):
    settings = load_settings(AZURE)
    first = plan.plan_submission(settings)
    again = plan.plan_submission(settings)
    assert [c.version for c in first.components] == [c.version for c in again.components]
    assert all(c.version.startswith(f"{c.spec_version}.") for c in first.components)

    assert submit(azure_sim, tmp_path) == 0
    azure_sim.requests.clear()
    assert submit(azure_sim, tmp_path) == 0  # the second run reads the registered components back and reuses them
    assert not puts(azure_sim, "components") and not puts(azure_sim, "codes")
    (job,) = azure_sim.sent("PUT", "/jobs/")
    assert job.body["properties"]["jobs"]["tuned"]["componentId"].endswith(
        next(f"/components/finetune/versions/{c.version}" for c in first.components if c.name == "finetune")
    )


def test_an_environment_registered_with_other_content_stops_the_submission(azure_sim, tmp_path, capsys):
    azure_sim.add(
        "environments",
        "chatft-train",
        TRAIN_VERSION,
        {"image": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04", "tags": {plan.CONTENT_TAG: "0" * 64}},
    )
    assert submit(azure_sim, tmp_path) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert "environments/train/environment.yml" in err and "bump `version`" in err
    assert not puts(azure_sim, "jobs")


def test_zero_gpu_quota_stops_before_anything_is_created(azure_sim, tmp_path, capsys):
    (gpu,) = [
        u
        for u in azure_sim.usages
        if u["name"]["value"] == "Standard NCADSA100v4 Family Cluster Dedicated vCPUs" and "/workspaces/" not in u["id"]
    ]
    gpu["limit"] = 0
    assert submit(azure_sim, tmp_path) == cli.EXIT_PREFLIGHT
    assert [r.method for r in azure_sim.requests] == ["GET", "GET", "GET"]
    captured = capsys.readouterr()
    assert "standardNCADSA100v4Family: zero quota in eastus2 (need 24 vCPUs" in captured.out
    assert "Preflight failed: nothing was created or submitted." in captured.err


def test_no_permission_to_read_quota_is_said_and_the_submission_goes_on(azure_sim, tmp_path, capsys):
    azure_sim.quota_forbidden = True
    assert submit(azure_sim, tmp_path) == 0
    assert "not checked: no permission to read quota" in capsys.readouterr().out
    assert puts(azure_sim, "jobs")


@pytest.mark.parametrize("status", ["Failed", "Canceled", "NotResponding"])
def test_a_failed_run_ends_in_a_clear_message_and_exit_code_4_not_a_traceback(azure_sim, tmp_path, capsys, status):
    """Defect 7: jobs.stream raised a JobException (a traceback) when a step failed."""
    azure_sim.job_statuses = ["Running", status]
    assert submit(azure_sim, tmp_path) == cli.EXIT_RUN_FAILED == 4
    (job,) = puts(azure_sim, "jobs")
    err = capsys.readouterr().err
    assert f"Pipeline run {job} ended {status}." in err and f"https://ml.azure.com/runs/{job}" in err
    assert "Traceback" not in err


def test_interrupting_the_follow_says_the_run_goes_on(azure_sim, tmp_path, capsys, monkeypatch):
    def interrupt(seconds):
        raise KeyboardInterrupt

    azure_sim.job_statuses = ["Running"]
    monkeypatch.setattr(azure_submit.time, "sleep", interrupt)
    assert submit(azure_sim, tmp_path) == cli.EXIT_INTERRUPTED
    assert "the run goes on in Azure ML" in capsys.readouterr().err


def test_no_stream_returns_after_submitting(azure_sim, tmp_path):
    assert submit(azure_sim, tmp_path, stream=False) == 0
    assert azure_sim.requests[-1].method == "PUT" and "/jobs/" in azure_sim.requests[-1].path


def test_dry_run_writes_model_typed_yaml_that_the_sdk_loads_and_validates_and_contacts_nothing(
    azure_sim, tmp_path, chats, capsys
):
    """Defect 4: the registry model goes in as an mlflow_model input, as the official fine-tuning samples pass it."""
    import yaml
    from azure.ai.ml import load_job

    assert submit(azure_sim, tmp_path, data=chats, dry_run=True) == 0
    assert azure_sim.requests == []
    folder = tmp_path / "out" / "azure"
    text = (folder / "pipeline_job.yml").read_text()
    reloaded = load_job(folder / "pipeline_job.yml")
    assert reloaded._validate().passed
    assert reloaded.jobs["tuned"].compute == "gpu-a100"
    assert yaml.safe_load(text)["inputs"]["base_model"] == {"path": REGISTRY_MODEL, "type": "mlflow_model"}
    for step in ("finetune", "evaluate", "validate_chat_jsonl"):
        spec = (PROJECT_ROOT / "components" / step / "component.yml").read_text()
        assert "base_model:\n    type: mlflow_model" in spec, step
    fingerprint, _ = plan.data_fingerprint(chats)
    version = fingerprint[: plan.VERSION_DIGITS]
    assert f"path: azureml:chatft-chat-data:{version}" in text
    assert reloaded.inputs["raw_data"].path.endswith(f"chatft-chat-data:{version}")  # the SDK drops "azureml:"

    summary = json.loads((folder / "submission_plan.json").read_text())
    assert summary["data_asset"] | {"from": None} == {
        "name": "chatft-chat-data",
        "version": version,
        "fingerprint": fingerprint,
        "records": 30,
        "from": None,
        "registered_only_if_missing": True,
    }
    assert [c["name"] for c in summary["components"]] == COMPONENTS
    assert [e["name"] for e in summary["environments"]] == ENVIRONMENTS
    assert summary["compute"]["gpu_cluster"] == "gpu-a100"
    assert summary["schedule"] == {"name": "chatft-weekly", "cron": "0 3 * * 1", "time_zone": "UTC"}
    out = capsys.readouterr().out
    assert "not checked: dry run" in out and "Cost estimate" in out


def test_dry_run_of_the_hugging_face_preset_says_there_is_nothing_to_register(tmp_path):
    assert submit(None, tmp_path, dry_run=True) == 0
    summary = json.loads((tmp_path / "out" / "azure" / "submission_plan.json").read_text())
    assert "HuggingFaceH4/ultrachat_200k" in summary["data_asset"]["note"]


def test_missing_workspace_config_is_explained_without_any_network(tmp_path, monkeypatch):
    for name in client.WORKSPACE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(client.WorkspaceConfigError, match=r"\.azureml/config\.json .*AZURE_SUBSCRIPTION_ID"):
        client.workspace_client(project_root=tmp_path)


def test_make_submit_flags_reach_the_submission(tmp_path, chats):
    """`make submit DRY_RUN=1 DATA=...` = pipelines.run --backend azure --dry-run --data ...: the flags are wired."""
    from pipelines import run

    args = run.parse_args(["--backend", "azure", "--dry-run", "--output-root", str(tmp_path), "--data", str(chats)])
    assert run.main(args) == 0
    summary = json.loads((tmp_path / "azure" / "submission_plan.json").read_text())
    assert summary["data_asset"]["records"] == 30
