"""make schedule / unschedule, offline: the JobSchedule the fake MLClient receives, and the dry-run YAML."""

from __future__ import annotations

import textwrap

import pytest

from pipelines import schedule
from pipelines.settings import PROJECT_ROOT, SettingsError, load_settings
from tests.helpers.fake_azure import AMPLE_QUOTA, FakeMLClient

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"


def create(client, tmp_path, dry_run=False, config=AZURE):
    return schedule.main(
        schedule.parse_args(
            ["create", "--config", str(config), "--output-root", str(tmp_path)] + ["--dry-run"] * dry_run
        ),
        ml_client=client,
    )


def test_schedule_create_or_update_gets_a_cron_job_schedule_around_the_validated_pipeline(tmp_path, capsys):
    from azure.ai.ml.entities import CronTrigger, JobSchedule, PipelineJob

    client = FakeMLClient()
    assert create(client, tmp_path) == 0
    names = client.sequence()
    assert names[:2] == ["compute.list_sizes", "compute.list_usage"]
    assert names[-1] == "schedules.begin_create_or_update"
    assert "jobs.create_or_update" not in names, "scheduling submits nothing by itself"
    sent = client.schedules.store["chatft-weekly"]
    assert isinstance(sent, JobSchedule) and isinstance(sent.trigger, CronTrigger)
    assert (sent.trigger.expression, sent.trigger.time_zone) == ("0 3 * * 1", "UTC")  # pipelines/config/azure.yaml
    job = sent.create_job
    assert isinstance(job, PipelineJob) and job._validate().passed
    assert job.settings.force_rerun is False  # unchanged steps are reused: an unchanged scheduled run is cheap
    assert job.jobs["tuned"].compute == "gpu-a100"
    # The schedule runs the registered components, like make submit.
    assert all(node.component.id and "/components/" in node.component.id for node in job.jobs.values())
    # It serialises with the SDK's own schema.
    body = sent._to_dict()
    assert body["trigger"] == {"type": "cron", "expression": "0 3 * * 1", "time_zone": "UTC"}
    assert body["create_job"]["settings"]["force_rerun"] is False
    assert "Schedule chatft-weekly: 0 3 * * 1 (UTC)" in capsys.readouterr().out


def test_dry_run_writes_a_schedule_yaml_the_sdk_loads_back(tmp_path):
    from azure.ai.ml.entities import PipelineJob
    from azure.ai.ml.entities._load_functions import load_schedule  # not re-exported by azure.ai.ml in 1.35

    client = FakeMLClient()
    assert create(client, tmp_path, dry_run=True) == 0
    assert client.calls == []
    loaded = load_schedule(tmp_path / "azure" / "schedule.yml")
    assert loaded.name == "chatft-weekly"
    assert (loaded.trigger.expression, loaded.trigger.time_zone) == ("0 3 * * 1", "UTC")
    assert isinstance(loaded.create_job, PipelineJob) and loaded.create_job._validate().passed
    assert loaded.create_job.settings.force_rerun is False


def test_zero_quota_creates_no_schedule(tmp_path):
    client = FakeMLClient(quota=AMPLE_QUOTA | {"standardNCADSA100v4Family": (0, 0)})
    assert create(client, tmp_path) == 3
    assert client.sequence() == ["compute.list_sizes", "compute.list_usage"]


def test_a_preset_without_a_schedule_says_how_to_add_one(tmp_path, capsys):
    preset = tmp_path / "noschedule.yaml"
    preset.write_text(AZURE.read_text().split("\nazure:")[0] + "\n")
    assert create(FakeMLClient(), tmp_path, config=preset) == 2
    assert "no azure.schedule section" in capsys.readouterr().err


def test_unschedule_disables_then_deletes(capsys):
    client = FakeMLClient()
    client.schedules.store["chatft-weekly"] = object()
    assert schedule.main(schedule.parse_args(["delete"]), ml_client=client) == 0
    assert client.sequence() == ["schedules.begin_disable", "schedules.begin_delete"]
    assert schedule.main(schedule.parse_args(["delete"]), ml_client=client) == 0
    assert "does not exist: nothing to remove" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("schedule: {name: s, cron: '0 3 * *'}", "must have 5 fields"),
        ("schedule: {name: s, cron: '0 3 * * 1', time_zone: Mars/Olympus}", "is not an Azure ML time zone"),
        ("schedule: {cron: '0 3 * * 1'}", "azure.schedule needs name"),
        ("schedule: {name: s, cron: '0 3 * * 1', every: week}", r"unknown key\(s\) azure.schedule.every"),
        ("data_asset: x", r"unknown key\(s\) azure.data_asset"),
    ],
)
def test_bad_azure_settings_name_the_key(tmp_path, section, message):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        textwrap.dedent(
            """\
            experiment_name: e
            base_model: azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/4
            base_model_name: Phi-3-mini-4k-instruct
            azure:
            """
        )
        + f"  {section}\n"
    )
    with pytest.raises(SettingsError, match=message):
        load_settings(preset)


def test_windows_time_zone_names_are_accepted(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "experiment_name: e\nbase_model: m\nbase_model_name: m\n"
        "azure:\n  schedule: {name: s, cron: '30 1 * * *', time_zone: W. Europe Standard Time}\n"
    )
    assert load_settings(preset).azure.schedule.time_zone == "W. Europe Standard Time"
