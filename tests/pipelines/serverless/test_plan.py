"""The serverless path offline: its settings, the fine-tuning job and the dry run, and the offline preflight."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from pipelines.azure import serverless
from pipelines.azure.serverless import cli as serverless_cli
from pipelines.settings import SettingsError, load_settings
from tests.helpers.serverless_service import PRESET, TEST_PRICING, make_plan


# ---- settings --------------------------------------------------------------------------------------------------
def test_preset_hyperparameters_are_strings_in_the_services_names():
    options = serverless.serverless_settings(load_settings(PRESET))
    assert options.hyperparameters == {
        "num_train_epochs": "1",
        "per_device_train_batch_size": "1",
        "learning_rate": "2e-05",
    }
    assert options.epochs == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hyperparameters": {"lora_rank": 8}}, "serverless.hyperparameters.lora_rank is not a documented"),
        ({"hyperparameters": {"num_train_epochs": 0}}, "must be a positive int"),
        ({"hyperparameters": {"num_train_epochs": 1.5}}, "must be a positive int"),
        ({"task": "Chat"}, "serverless.task 'Chat' is not one of"),
        ({"colour": "blue"}, "unknown key(s) serverless.colour"),
    ],
)
def test_bad_serverless_settings_name_file_and_key(change, message):
    settings = load_settings(PRESET)
    settings = replace(settings, serverless={**settings.serverless, **change})
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        serverless.serverless_settings(settings)
    assert "serverless.yaml" in str(err.value)


def test_an_unpinned_model_is_refused():
    settings = replace(load_settings(PRESET), base_model="azureml://registries/azureml/models/Phi-3-mini-4k-instruct")
    with pytest.raises(SettingsError, match="pinned version"):
        serverless.serverless_settings(settings)


def test_training_steps_are_refused_on_this_path():
    settings = load_settings(PRESET, ["finetune.learning_rate=1e-4"])
    with pytest.raises(SettingsError, match="steps.finetune do not run on the serverless path"):
        serverless.check_data_steps(settings)


# ---- the job and the dry run -----------------------------------------------------------------------------------
def test_job_yaml_loads_back_with_the_sdk(tmp_path):
    from azure.ai.ml import load_job

    plan = make_plan(tmp_path)
    path = serverless.write_dry_run(plan, tmp_path / "out")
    job = load_job(source=path)
    body = yaml.safe_load(path.read_text())
    assert body["type"] == "finetuning" and body["task"] == "chatCompletion"
    assert body["model"] == {"path": plan.settings.base_model, "type": "mlflow_model"}
    assert body["training_data"] == {"path": plan.data.train.uri, "type": "uri_file"}
    assert body["validation_data"]["path"] == plan.data.validation.uri
    assert job.hyperparameters == plan.serverless.hyperparameters
    assert job.outputs["registered_model"].name == "chat-ft-phi3-maas"
    written = json.loads(path.with_name("plan.json").read_text())
    assert [a["version"] for a in written["data_assets"]] == [plan.data.train.version, plan.data.validation.version]
    calls = [c["call"] for c in written["calls"]]
    assert calls.index("jobs.create_or_update(finetuning job)") < calls.index(
        "serverless_endpoints.begin_create_or_update(chat-ft-phi3-maas)"
    )


@pytest.mark.slow
def test_dry_run_runs_the_data_steps_and_writes_job_and_plan(tmp_path, capsys):
    """The whole `make submit BACKEND=serverless DRY_RUN=1`: prep and validate run locally, nothing goes out."""
    code = serverless_cli.main(serverless_cli.parse_args(["submit", "--dry-run", "--output-root", str(tmp_path)]))
    out = capsys.readouterr().out
    assert code == 0, out
    job = yaml.safe_load((tmp_path / "azure" / "serverless" / "finetuning_job.yml").read_text())
    plan = json.loads((tmp_path / "azure" / "serverless" / "plan.json").read_text())
    assert job["training_data"]["path"] == f"azureml:chatft-chat-data-train:{plan['data_assets'][0]['version']}"
    assert plan["data_assets"][0]["records"] + plan["data_assets"][1]["records"] == 300  # data/sample
    assert "GPU quota: none needed" in out and "offered in eastus2" in out


def test_preflight_offline_says_no_gpu_quota_and_estimates_cost(tmp_path):
    plan = make_plan(tmp_path)
    pricing = serverless.load_pricing()
    pricing["prices"].update(TEST_PRICING["prices"])
    report = serverless.run_preflight(plan.settings, plan.serverless, plan.data, pricing)
    assert report.ok and "GPU quota: none needed" in report.text
    tokens = serverless.estimate_tokens(plan.data.train.path, pricing["tokens"])
    assert f"training: {tokens / 1000:,.1f} k tokens × 0.01 = {tokens / 1000 * 0.01:,.2f} USD" in report.text
    assert "hosting: 24.0 h deployed × 1 = 24.00 USD" in report.text


def test_preflight_says_when_prices_are_unknown(tmp_path):
    plan = make_plan(tmp_path)
    pricing = serverless.load_pricing()
    report = serverless.run_preflight(plan.settings, plan.serverless, plan.data, pricing)
    assert "price unknown (training_per_1k_tokens is null" in report.text and "total: not estimated" in report.text
