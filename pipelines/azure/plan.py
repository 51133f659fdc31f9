"""Offline: everything a submission would create or reuse, worked out without the workspace; and the dry run.

The training data's fingerprint (prep_data's own) is the data asset's version; environments are named and versioned
in ``environments/*/environment.yml``; each component's version grows a hash of its code, so changed code gets a new
version and unchanged code reuses the registered one (and its step cache).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from chatft.data import fingerprint, read_local_records, record_digests
from chatft.errors import UsageError
from pipelines import sdk_private
from pipelines.settings import PROJECT_ROOT, RunSettings, SettingsError, load_compute, project_path

ENVIRONMENTS_DIR = PROJECT_ROOT / "environments"
# Tags written on what is registered: how a later run recognises the same content.
FINGERPRINT_TAG = "data_fingerprint"
CONTENT_TAG = "content_sha256"
# 16 hex digits (64 bits) of the sha256 fingerprint: short enough to read, no collision in practice.
VERSION_DIGITS = 16
COMPONENT_HASH_DIGITS = 12


class SubmissionError(UsageError, RuntimeError):
    """Something to fix before submitting (data, an asset version); the message says what and where."""


# ---- the data -------------------------------------------------------------------------------------------------
def data_fingerprint(path: Path) -> tuple[str, int]:
    """(fingerprint, records) of local chat JSONL: the value prep_data writes to split_info.json.

    It depends only on the set of records (not file names, order or line endings), so a model's split_info
    names the data asset version it was trained on.
    """
    try:
        source = read_local_records(path)
    except FileNotFoundError as err:  # NoJsonlFilesError included
        raise SubmissionError(f"training data: {err}") from None
    if not source.records:
        raise SubmissionError(f"training data: {path} has no records (only blank lines)")
    return fingerprint(record_digests(source.records)), len(source.records)


def with_local_data(settings: RunSettings, data: str) -> RunSettings:
    """Train on local JSONL instead of the preset's data: prep_data takes raw_data or hf_dataset, never both."""
    steps = {name: dict(values) for name, values in settings.steps.items()}
    steps.get("prep_data", {}).pop("hf_dataset", None)
    return replace(settings, raw_data=data, steps=steps)


def local_data_path(settings: RunSettings) -> Path | None:
    """The local training data of these settings, or None when it is an Azure asset or a Hugging Face dataset."""
    raw = settings.raw_data
    if not raw or raw.startswith("azureml:") or "://" in raw:
        return None
    return project_path(raw)


@dataclass(frozen=True)
class DataAssetPlan:
    name: str
    version: str
    fingerprint: str
    records: int
    local_path: Path

    @property
    def uri(self) -> str:
        return f"azureml:{self.name}:{self.version}"


def plan_data_asset(settings: RunSettings) -> DataAssetPlan | None:
    path = local_data_path(settings)
    if path is None:
        return None
    fingerprint, records = data_fingerprint(path)
    return DataAssetPlan(settings.azure.data_asset_name, fingerprint[:VERSION_DIGITS], fingerprint, records, path)


def describe_remote_data(settings: RunSettings) -> str:
    if settings.raw_data:
        return f"raw_data {settings.raw_data} is already in Azure: passed through, nothing to register"
    prep = settings.step("prep_data")
    dataset = prep.get("hf_dataset")
    if dataset:
        split = prep.get("hf_split", "the default split")
        return (
            f"Hugging Face dataset {dataset} [{split}] is read by prep_data on the cluster: no local data to "
            "register (pass --data PATH to train on local JSONL instead)"
        )
    return "no training data configured"


# ---- environments and components ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvironmentPlan:
    name: str
    version: str
    spec: Path
    content: str


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    spec_version: str
    version: str  # what gets registered: "<spec version>.<content hash>"
    spec: Path
    content: str


def sha256_files(paths: list[Path]) -> str:
    from pipelines.local_backend import hash_path

    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{hash_path(path)}\0".encode())
    return digest.hexdigest()


def plan_environments(folder: Path = ENVIRONMENTS_DIR) -> list[EnvironmentPlan]:
    """Every spec in environments/: the components and the endpoint refer to them as name:version."""
    import yaml

    plans = []
    for spec in sorted(folder.glob("*/environment.yml")):
        body = yaml.safe_load(spec.read_text(encoding="utf-8"))
        plans.append(EnvironmentPlan(str(body["name"]), str(body["version"]), spec, sha256_files([spec.parent])))
    return plans


def plan_components(job) -> list[ComponentPlan]:
    """One entry per distinct component of the job. The version grows a content hash, so changed code gets a new
    version (registered versions are immutable) and unchanged code reuses the registered one and its step cache."""
    plans: dict[str, ComponentPlan] = {}
    for node in job.jobs.values():
        component = node.component
        if component.name in plans:
            continue
        base = Path(component.base_path)
        sources = [base / (component.code or ".")]
        sources += [(base / include).resolve() for include in component.additional_includes or []]
        content = sha256_files(sources)
        version = f"{component.version}.{content[:COMPONENT_HASH_DIGITS]}"
        plans[component.name] = ComponentPlan(component.name, str(component.version), version, base, content)
    return list(plans.values())


# ---- the plan -------------------------------------------------------------------------------------------------
@dataclass
class SubmissionPlan:
    """Everything a submission would create or reuse, worked out offline."""

    settings: RunSettings  # raw_data points at the data asset when local data is registered
    job: Any  # azure.ai.ml.entities.PipelineJob
    data: DataAssetPlan | None
    data_note: str
    environments: list[EnvironmentPlan]
    components: list[ComponentPlan]
    compute: dict[str, Any] = field(default_factory=load_compute)

    def summary(self) -> dict[str, Any]:
        """'What would be created', as written next to the dry-run YAML."""
        root = PROJECT_ROOT

        def rel(path: Path) -> str:
            return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

        data = (
            {
                "name": self.data.name,
                "version": self.data.version,
                "fingerprint": self.data.fingerprint,
                "records": self.data.records,
                "from": rel(self.data.local_path),
                "registered_only_if_missing": True,
            }
            if self.data
            else {"note": self.data_note}
        )
        return {
            "experiment": self.settings.experiment_name,
            "preset": rel(Path(self.settings.source)),
            "data_asset": data,
            "environments": [{"name": e.name, "version": e.version, "spec": rel(e.spec)} for e in self.environments],
            "components": [
                {"name": c.name, "version": c.version, "spec": rel(c.spec / "component.yml")} for c in self.components
            ],
            "compute": {
                "gpu_cluster": self.compute["gpu_cluster"]["name"],
                "cpu_cluster": self.compute["cpu_cluster"]["name"],
                # where finetune runs: the GPU cluster, or a multi-GPU preset's cluster and node count
                "finetune": {
                    "cluster": self.compute[self.settings.finetune_compute.cluster]["name"],
                    "nodes": self.settings.finetune_compute.nodes,
                },
                "online_endpoint": self.compute["online_endpoint"],
            },
            "schedule": (
                {
                    "name": self.settings.azure.schedule.name,
                    "cron": self.settings.azure.schedule.cron,
                    "time_zone": self.settings.azure.schedule.time_zone,
                }
                if self.settings.azure.schedule
                else None
            ),
        }


def plan_submission(settings: RunSettings, data: str | None = None) -> SubmissionPlan:
    """Offline: fingerprint the data, build the pipeline against the data asset, and list every asset to ensure."""
    from pipelines.finetune_pipeline import build_pipeline

    if data:
        settings = with_local_data(settings, data)
    data_plan = plan_data_asset(settings)
    if data_plan:
        settings = replace(settings, raw_data=data_plan.uri)
    note = "" if data_plan else describe_remote_data(settings)
    job = build_pipeline(settings)
    return SubmissionPlan(settings, job, data_plan, note, plan_environments(), plan_components(job))


def write_dry_run(plan: SubmissionPlan, output_root: Path) -> Path:
    """The fully resolved pipeline YAML (exactly what would be submitted) and the plan beside it."""
    folder = output_root / "azure"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "pipeline_job.yml"
    plan.job.dump(target)
    (folder / "submission_plan.json").write_text(json.dumps(plan.summary(), indent=2) + "\n", encoding="utf-8")
    return target


def print_plan(plan: SubmissionPlan, dry_run: bool) -> None:
    verb = "would register" if dry_run else "ensures"
    summary = plan.summary()
    print(f"Submission plan ({summary['preset']}, experiment {summary['experiment']}); it {verb}, only if missing:")
    if plan.data:
        data = summary["data_asset"]
        print(f"  data asset   {data['name']}:{data['version']}  ({data['records']} records from {data['from']})")
    else:
        print(f"  data         {plan.data_note}")
    for env in plan.environments:
        print(f"  environment  {env.name}:{env.version}")
    for component in plan.components:
        print(f"  component    {component.name}:{component.version}")
    compute = summary["compute"]
    print(f"  compute      {compute['gpu_cluster']} (GPU), {compute['cpu_cluster']} (CPU); created by make infra")
    finetune = compute["finetune"]
    if finetune["cluster"] != compute["gpu_cluster"] or finetune["nodes"] > 1:
        print(f"  compute      finetune on {finetune['cluster']}, {finetune['nodes']} node(s)")
    if summary["schedule"]:
        schedule = summary["schedule"]
        print(f"  schedule     {schedule['name']}: '{schedule['cron']}' {schedule['time_zone']} (make schedule)")


def prepare(settings: RunSettings, options) -> SubmissionPlan:
    """The plan, validated with the SDK's own checks (the same as at submission); a SubmissionError says why not."""
    try:
        plan = plan_submission(settings, options.data)
    except (SubmissionError, SettingsError) as err:
        raise SubmissionError(f"Cannot submit: {err}") from None
    problems = sdk_private.validation_errors(plan.job)
    if problems:
        raise SubmissionError(f"Pipeline failed azure-ai-ml validation:\n{problems}")
    return plan
