"""Register what a plan lists, each only when its version does not exist yet: environments, the training data,
the components. Registered versions are immutable, so an existing version is reused, never overwritten."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from pipelines.azure.plan import (
    CONTENT_TAG,
    FINGERPRINT_TAG,
    VERSION_DIGITS,
    ComponentPlan,
    DataAssetPlan,
    EnvironmentPlan,
    SubmissionError,
    SubmissionPlan,
)
from pipelines.settings import PROJECT_ROOT


# ---- registering ----------------------------------------------------------------------------------------------
def get_or_none(operations, name: str, version: str | None = None):
    """``operations.get`` of a versioned asset, or of a named entity without ``version``; None when it is missing."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return operations.get(name) if version is None else operations.get(name=name, version=version)
    except ResourceNotFoundError:
        return None


def ensure_environments(ml_client, plans: list[EnvironmentPlan]) -> None:
    from azure.ai.ml import load_environment

    for plan in plans:
        existing = get_or_none(ml_client.environments, plan.name, plan.version)
        if existing is None:
            environment = load_environment(source=plan.spec)
            environment.tags = {**(environment.tags or {}), CONTENT_TAG: plan.content}
            ml_client.environments.create_or_update(environment)
            print(f"  environment  {plan.name}:{plan.version} registered (its image builds on first use)")
            continue
        registered = (existing.tags or {}).get(CONTENT_TAG)
        if registered and registered != plan.content:
            raise SubmissionError(
                f"{plan.spec.relative_to(PROJECT_ROOT)}: environment {plan.name}:{plan.version} is already registered "
                "with different content, and versions are immutable: bump `version` there and in the components "
                "that reference it"
            )
        state = "unchanged" if registered else "exists (registered outside this tool; not compared)"
        print(f"  environment  {plan.name}:{plan.version} {state}")


def ensure_data_asset(ml_client, plan: DataAssetPlan) -> None:
    """Register the data only when its fingerprint version is new: unchanged data is never uploaded again."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    if get_or_none(ml_client.data, plan.name, plan.version) is not None:
        print(f"  data asset   {plan.name}:{plan.version} unchanged (already registered)")
        return
    with tempfile.TemporaryDirectory(prefix="chatft-data-") as staging:
        folder = plan.local_path
        if folder.is_file():  # the pipeline input is a uri_folder: register a folder holding the file
            folder = Path(staging)
            shutil.copy2(plan.local_path, folder / plan.local_path.name)
        data = Data(
            name=plan.name,
            version=plan.version,
            type=AssetTypes.URI_FOLDER,
            path=str(folder),
            description=f"Chat JSONL, {plan.records} records; version = data fingerprint (prep_data's split_info).",
            tags={FINGERPRINT_TAG: plan.fingerprint, "records": str(plan.records)},
        )
        try:
            ml_client.data.create_or_update(data)
        except Exception as err:  # the service's answer when another run registered this version first
            if not _registered_meanwhile(ml_client, plan, err):
                raise
            print(f"  data asset   {plan.name}:{plan.version} registered meanwhile by another run (same fingerprint)")
            return
    print(f"  data asset   {plan.name}:{plan.version} registered ({plan.records} records)")


def _registered_meanwhile(ml_client, plan: DataAssetPlan, err: Exception) -> bool:
    """Whether ``err`` from registering ``plan`` is a lost race: the version exists now, with the same data.

    Two submissions of the same new data (a redelivered event, a second worker) both find the version missing and
    both register it; the second gets an error from the service (a conflict, or AssetPathException when the
    service refuses to change the path). The version is then there: with our fingerprint it is the same data and
    nothing is lost; with another it is a real clash, reported as one.
    """
    from azure.ai.ml.exceptions import AssetPathException
    from azure.core.exceptions import HttpResponseError

    if not isinstance(err, (HttpResponseError, AssetPathException)):
        return False
    existing = get_or_none(ml_client.data, plan.name, plan.version)
    if existing is None:
        return False
    registered = (existing.tags or {}).get(FINGERPRINT_TAG)
    if registered != plan.fingerprint:
        raise SubmissionError(
            f"data asset {plan.name}:{plan.version} already exists with data fingerprint {registered or 'none'}, "
            f"not {plan.fingerprint[:VERSION_DIGITS]}…: another asset took this version; remove it or rename the "
            "data asset (azure.data_asset_name in the preset)"
        ) from err
    return True


def ensure_components(ml_client, plans: list[ComponentPlan], job) -> dict:
    """Register each component version once; the registered components by name."""
    registered = {}
    for plan in plans:
        existing = get_or_none(ml_client.components, plan.name, plan.version)
        if existing is None:
            component = next(n.component for n in job.jobs.values() if n.component.name == plan.name)
            component.tags = {**(component.tags or {}), CONTENT_TAG: plan.content}
            existing = ml_client.components.create_or_update(component, version=plan.version)
            print(f"  component    {plan.name}:{plan.version} registered")
        else:
            print(f"  component    {plan.name}:{plan.version} unchanged")
        registered[plan.name] = existing
    return registered


def ensure_assets(ml_client, plan: SubmissionPlan) -> None:
    """Register what is missing, then rebuild ``plan.job`` from the registered components: each step then refers to
    its component by id (what the service runs and caches by), through the public pipeline DSL."""
    from pipelines.finetune_pipeline import build_pipeline

    print("Registering (only what is missing):")
    ensure_environments(ml_client, plan.environments)
    if plan.data:
        ensure_data_asset(ml_client, plan.data)
    else:
        print(f"  data         {plan.data_note}")
    registered = ensure_components(ml_client, plan.components, plan.job)
    plan.job = build_pipeline(plan.settings, components=registered)
