"""Step 2 of the serverless path, offline: the fine-tuning job as it would be submitted, the calls a submission
makes, and the dry run (the job YAML reloaded by the SDK, and plan.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.azure.plan import FINGERPRINT_TAG
from pipelines.azure.serverless.data import ValidatedData, prepare_data
from pipelines.azure.serverless.settings import (
    FAILED_STATES,
    REGIONS_TAG,
    SUCCEEDED,
    ServerlessError,
    ServerlessSettings,
    base_model_version,
    check_data_steps,
    serverless_settings,
)
from pipelines.settings import PROJECT_ROOT, RunSettings


def build_job(settings: RunSettings, serverless: ServerlessSettings, data: ValidatedData):
    """The fine-tuning job, exactly as it would be submitted."""
    from azure.ai.ml.finetuning import create_finetuning_job

    job = create_finetuning_job(
        model=settings.base_model,
        task=serverless.task,
        training_data=data.train.uri,
        validation_data=data.validation.uri,
        hyperparameters=dict(serverless.hyperparameters),
        output_model_name_prefix=serverless.output_model_name_prefix,
        experiment_name=settings.experiment_name,
        display_name=f"Fine-tune {settings.base_model_name} (serverless)",
        tags={
            FINGERPRINT_TAG: data.split_info.get("fingerprint", ""),
            "train_fingerprint": data.train.fingerprint,
            "validation_fingerprint": data.validation.fingerprint,
            "base_model": settings.base_model,
        },
    )
    return job


def planned_calls(settings: RunSettings, serverless: ServerlessSettings, data: ValidatedData) -> list[dict]:
    """The calls a submission makes, in order, with the condition under which each one creates something."""
    registry, name, version = base_model_version(settings.base_model)
    calls = [
        {"call": "workspaces.get", "why": "workspace region for the region check"},
        {"call": f"models.get({name}, version={version}) in registry {registry}", "why": f"catalog tag {REGIONS_TAG}"},
    ]
    if serverless.marketplace_subscription:
        calls.append({"call": f"marketplace_subscriptions.get({serverless.subscription_name})", "why": "preflight"})
    for file in data.files:
        calls.append({"call": f"data.get({file.asset_name}, version={file.version})", "why": "registered already?"})
        calls.append(
            {
                "call": f"data.create_or_update(uri_file {file.asset_name}:{file.version})",
                "only_if": "missing",
                "uploads": str(
                    file.path.relative_to(PROJECT_ROOT) if file.path.is_relative_to(PROJECT_ROOT) else file.path
                ),
            }
        )
    calls += [
        {"call": "jobs.create_or_update(finetuning job)", "prints": "Studio URL"},
        {"call": "jobs.get(job) every poll_seconds", "until": f"{SUCCEEDED} or one of {sorted(FAILED_STATES)}"},
        {"call": "MLflow: the job run's metric history", "metrics": serverless.metrics},
    ]
    if serverless.marketplace_subscription:
        calls.append(
            {
                "call": f"marketplace_subscriptions.begin_create_or_update({serverless.subscription_name})",
                "only_if": "missing and the quality gate passed",
            }
        )
    calls += [
        {"call": f"serverless_endpoints.begin_create_or_update({serverless.endpoint_name})", "only_if": "gate passed"},
        {"call": f"serverless_endpoints.get_keys({serverless.endpoint_name})", "then": "POST /v1/chat/completions"},
    ]
    return calls


@dataclass
class Plan:
    settings: RunSettings
    serverless: ServerlessSettings
    data: ValidatedData
    job: Any  # azure.ai.ml.entities._job.finetuning.custom_model_finetuning_job.CustomModelFineTuningJob

    def summary(self) -> dict:
        return {
            "preset": str(Path(self.settings.source).relative_to(PROJECT_ROOT))
            if Path(self.settings.source).is_relative_to(PROJECT_ROOT)
            else self.settings.source,
            "model": self.settings.base_model,
            "task": self.job.task,
            "hyperparameters": self.serverless.hyperparameters,
            "data_fingerprint": self.data.split_info.get("fingerprint"),
            "data_assets": [
                {
                    "name": f.asset_name,
                    "version": f.version,
                    "type": "uri_file",
                    "records": f.records,
                    "fingerprint": f.fingerprint,
                    "registered_only_if_missing": True,
                }
                for f in self.data.files
            ],
            "endpoint": self.serverless.endpoint_name,
            "calls": planned_calls(self.settings, self.serverless, self.data),
        }


def make_plan(settings: RunSettings, output_root: Path, quiet: bool = False) -> Plan:
    serverless = serverless_settings(settings)
    check_data_steps(settings)
    data = prepare_data(settings, output_root, quiet=quiet)
    return Plan(settings, serverless, data, build_job(settings, serverless, data))


def write_dry_run(plan: Plan, output_root: Path) -> Path:
    """The job YAML, reloaded with the SDK's load_job (its schema validation), and the plan of calls beside it."""
    from azure.ai.ml import load_job

    folder = output_root / "azure" / "serverless"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "finetuning_job.yml"
    plan.job.dump(target)
    reloaded = load_job(source=target)  # raises ValidationError naming the field when the YAML is invalid
    if reloaded.hyperparameters != plan.job.hyperparameters or reloaded.task != plan.job.task:
        raise ServerlessError(f"{target}: reloaded job differs from the built one (task or hyper-parameters)")
    (folder / "plan.json").write_text(json.dumps(plan.summary(), indent=2) + "\n", encoding="utf-8")
    return target
