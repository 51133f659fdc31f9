"""Submit the same pipeline object to Azure ML.

The workspace comes from ``.azureml/config.json`` (as written by the Studio's "download config") or
from the environment variables AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME;
credentials from ``DefaultAzureCredential`` (az login, a managed identity, or GitHub OIDC).
Nothing here runs in the tests against Azure: they pass a recording fake client instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipelines.settings import PROJECT_ROOT, RunSettings

WORKSPACE_ENV = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
FAILED_STATES = {"Failed", "Canceled", "NotResponding"}


class WorkspaceConfigError(RuntimeError):
    """No workspace is configured; the message says both ways to configure one."""


def workspace_client(project_root: Path = PROJECT_ROOT):
    """An MLClient for the configured workspace. Building it does no I/O; the first call does."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    config = project_root / ".azureml" / "config.json"
    if config.is_file():
        return MLClient.from_config(credential=credential, path=str(config))
    missing = [name for name in WORKSPACE_ENV if not os.environ.get(name)]
    if missing:
        raise WorkspaceConfigError(
            f"no Azure ML workspace configured: create {config.relative_to(project_root)} "
            f"(Studio → workspace → Download config.json) or set {', '.join(missing)}"
        )
    return MLClient(
        credential,
        subscription_id=os.environ["AZURE_SUBSCRIPTION_ID"],
        resource_group_name=os.environ["AZURE_RESOURCE_GROUP"],
        workspace_name=os.environ["AZUREML_WORKSPACE_NAME"],
    )


def write_dry_run(job, output_root: Path) -> Path:
    """The fully resolved pipeline YAML, exactly what would be submitted."""
    target = output_root / "azure" / "pipeline_job.yml"
    target.parent.mkdir(parents=True, exist_ok=True)
    job.dump(target)
    return target


def submit(settings: RunSettings, dry_run: bool, output_root: Path, ml_client=None, stream: bool = True) -> int:
    from pipelines.finetune_pipeline import build_pipeline

    job = build_pipeline(settings)
    validation = job._validate()
    if not validation.passed:
        print(f"Pipeline failed azure-ai-ml validation:\n{validation}", file=sys.stderr)
        return 2
    if dry_run:
        path = write_dry_run(job, output_root)
        print(f"Dry run: resolved pipeline written to {path}; nothing was submitted.")
        return 0
    try:
        ml_client = ml_client or workspace_client()
    except WorkspaceConfigError as err:
        print(f"Cannot submit: {err}", file=sys.stderr)
        return 2
    submitted = ml_client.jobs.create_or_update(job, experiment_name=settings.experiment_name)
    print(f"Submitted {submitted.name}: {submitted.studio_url}", flush=True)
    if not stream:
        return 0
    ml_client.jobs.stream(submitted.name)  # prints step status until the pipeline ends
    final = ml_client.jobs.get(submitted.name)
    print(f"Pipeline {submitted.name} ended: {final.status}")
    return 1 if final.status in FAILED_STATES else 0
