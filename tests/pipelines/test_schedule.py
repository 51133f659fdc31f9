"""make schedule / unschedule, offline: the JobSchedule a real MLClient sends to the Azure ML REST simulation
(tests/helpers/azure_transport.py), through the SDK's serializer and long-running-operation poller, and the dry-run
YAML."""

from __future__ import annotations

import textwrap

import pytest

from pipelines import schedule
from pipelines.settings import PROJECT_ROOT, SettingsError, load_settings

AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"


def create(ml_client, tmp_path, dry_run=False, config=AZURE):
    return schedule.main(
        schedule.parse_args(
            ["create", "--config", str(config), "--output-root", str(tmp_path)] + ["--dry-run"] * dry_run
        ),
        ml_client=ml_client,
    )


def test_schedule_create_sends_a_cron_schedule_around_the_pipeline_of_registered_components(
    azure_sim, tmp_path, capsys
):
    assert create(azure_sim.client(), tmp_path) == 0
    methods = [r.method for r in azure_sim.requests]
    assert methods[:3] == ["GET", "GET", "GET"]  # the workspace, its sizes, its usages: preflight first
    assert not azure_sim.sent("PUT", "/jobs/"), "scheduling submits nothing by itself"
    (put,) = azure_sim.sent("PUT", "/schedules/chatft-weekly$")
    assert azure_sim.sent("GET", "/mfeOperationsStatus/"), "the SDK polled the long-running create"
    body = put.body["properties"]
    assert body["trigger"]["triggerType"] == "Cron"
    assert (body["trigger"]["expression"], body["trigger"]["timeZone"]) == ("0 3 * * 1", "UTC")
    job = body["action"]["jobDefinition"]
    assert body["action"]["actionType"] == "CreateJob" and job["jobType"] == "Pipeline"
    assert job["settings"]["force_rerun"] is False  # unchanged steps are reused: an unchanged scheduled run is cheap
    assert job["jobs"]["tuned"]["computeId"].endswith("/computes/gpu-a100")
    # The schedule runs the registered components, like make submit.
    registered = {r.path.split("/components/")[1] for r in azure_sim.sent("PUT", "/components/")}
    assert {node["componentId"].split("/components/")[1] for node in job["jobs"].values()} == registered
    assert "Schedule chatft-weekly: 0 3 * * 1 (UTC)" in capsys.readouterr().out


def test_dry_run_writes_a_schedule_yaml_the_sdk_loads_back(tmp_path):
    from azure.ai.ml.entities import PipelineJob
    from azure.ai.ml.entities._load_functions import load_schedule  # not re-exported by azure.ai.ml in 1.35

    assert create(None, tmp_path, dry_run=True) == 0
    loaded = load_schedule(tmp_path / "azure" / "schedule.yml")
    assert loaded.name == "chatft-weekly"
    assert (loaded.trigger.expression, loaded.trigger.time_zone) == ("0 3 * * 1", "UTC")
    assert isinstance(loaded.create_job, PipelineJob) and loaded.create_job._validate().passed
    assert loaded.create_job.settings.force_rerun is False


def test_zero_quota_creates_no_schedule(azure_sim, tmp_path):
    (gpu,) = [
        u
        for u in azure_sim.usages
        if u["name"]["value"] == "Standard NCADSA100v4 Family Cluster Dedicated vCPUs" and "/workspaces/" not in u["id"]
    ]
    gpu["limit"] = 0
    assert create(azure_sim.client(), tmp_path) == 3
    assert [r.method for r in azure_sim.requests] == ["GET", "GET", "GET"]


def test_a_preset_without_a_schedule_says_how_to_add_one(azure_sim, tmp_path, capsys):
    preset = tmp_path / "noschedule.yaml"
    preset.write_text(AZURE.read_text().split("\nazure:")[0] + "\n")
    assert create(azure_sim.client(), tmp_path, config=preset) == 2
    assert "no azure.schedule section" in capsys.readouterr().err
    assert azure_sim.requests == []


def test_unschedule_disables_then_deletes_and_a_missing_schedule_is_nothing_to_remove(azure_sim, capsys):
    azure_sim.add(
        "schedules",
        "chatft-weekly",
        properties={
            "isEnabled": True,
            "trigger": {"triggerType": "Cron", "expression": "0 3 * * 1", "timeZone": "UTC"},
            "action": {"actionType": "CreateJob", "jobDefinition": {"jobType": "Pipeline"}},
        },
    )
    assert schedule.main(schedule.parse_args(["delete"]), ml_client=azure_sim.client()) == 0
    assert "disabled and deleted" in capsys.readouterr().out
    (disable,) = azure_sim.sent("PUT", "/schedules/chatft-weekly$")
    assert disable.body["properties"]["isEnabled"] is False
    assert azure_sim.sent("DELETE", "/schedules/chatft-weekly$") and azure_sim.get("schedules", "chatft-weekly") is None
    assert schedule.main(schedule.parse_args(["delete"]), ml_client=azure_sim.client()) == 0
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
