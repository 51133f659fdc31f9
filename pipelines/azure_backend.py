"""Submit the same pipeline object to Azure ML.

The workspace comes from ``.azureml/config.json`` (as written by the Studio's "download config") or
from the environment variables AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME;
credentials from ``DefaultAzureCredential`` (az login, a managed identity, or GitHub OIDC).

A submission, in order (``plan_submission`` is offline; ``ensure_assets`` talks to the workspace):
  1. plan: fingerprint local training data, build and validate the pipeline, work out every asset and version;
  2. preflight (``pipelines/preflight.py``): quota for the clusters and the endpoint, and a cost estimate;
  3. register what is missing, each only when its version does not exist yet: the environments (name and version
     from ``environments/*/environment.yml``), the training data as a ``uri_folder`` data asset whose version is
     the data fingerprint, and each component under a version derived from its content;
  4. submit the pipeline job, print its Studio URL, stream its status, exit non-zero when it fails.
Dry run (``--dry-run``) stops after 2 and writes the resolved pipeline YAML and a plan of what would be created.

Nothing here runs against Azure in the tests: they pass a recording fake client instead.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipelines.settings import (
    PROJECT_ROOT,
    RunSettings,
    SettingsError,
    add_settings_arguments,
    load_compute,
    project_path,
    settings_from_args,
)

AZURE_PRESET = "pipelines/config/azure.yaml"
WORKSPACE_ENV = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")
FAILED_STATES = {"Failed", "Canceled", "NotResponding"}
ENVIRONMENTS_DIR = PROJECT_ROOT / "environments"
PREP_DATA_SCRIPT = PROJECT_ROOT / "components" / "prep_data" / "prep_data.py"
# Tags written on what this module registers: how a later run recognises the same content.
FINGERPRINT_TAG = "data_fingerprint"
CONTENT_TAG = "content_sha256"
# 16 hex digits (64 bits) of the sha256 fingerprint: short enough to read, no collision in practice.
VERSION_DIGITS = 16
COMPONENT_HASH_DIGITS = 12
# Exit codes beyond 0/1: bad settings or assets (2), preflight refused (3).
EXIT_INVALID, EXIT_PREFLIGHT = 2, 3


class WorkspaceConfigError(RuntimeError):
    """No workspace is configured; the message says both ways to configure one."""


class SubmissionError(RuntimeError):
    """Something to fix before submitting (data, an asset version); the message says what and where."""


@dataclass(frozen=True)
class SubmitOptions:
    """What ``make submit`` / ``make preflight`` / ``make retrain`` take besides the preset."""

    data: str | None = None  # local chat JSONL (file or folder) replacing the preset's training data
    tokens: int | None = None  # training tokens (all epochs), when the user knows better than the estimate
    data_report: Path | None = None  # a validate step's data_report.json with a "tokens" block
    pricing: Path | None = None  # overrides for infra/pricing.json
    stream: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SubmitOptions:
        return cls(
            data=args.data,
            tokens=args.tokens,
            data_report=Path(args.data_report) if args.data_report else None,
            pricing=Path(args.pricing) if args.pricing else None,
            stream=not getattr(args, "no_stream", False),
        )


def add_azure_arguments(parser: argparse.ArgumentParser, dry_run: bool = True) -> None:
    """The flags shared by submit, preflight, schedule and retrain (``dry_run=False``: the caller has --dry-run)."""
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="azure: write what would be submitted; no network")
    parser.add_argument(
        "--data", help="azure: local chat JSONL file or folder to train on (replaces the preset's dataset)"
    )
    parser.add_argument(
        "--tokens", type=int, help="preflight: training tokens over all epochs, instead of the estimate"
    )
    parser.add_argument("--data-report", help="preflight: a validate step's data_report.json to count tokens from")
    parser.add_argument("--pricing", help="preflight: JSON overriding infra/pricing.json (prices, tokens/s)")
    parser.add_argument("--no-stream", action="store_true", help="azure: submit and return without streaming")


def azure_parser(description: str, output_root_help: str | None = None) -> argparse.ArgumentParser:
    """The command line of preflight, schedule and retrain: --config/--set (the Azure preset by default), the flags
    of ``add_azure_arguments`` and, when ``output_root_help`` says what goes there, --output-root."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(parser, default_config=AZURE_PRESET)
    add_azure_arguments(parser)
    if output_root_help:
        parser.add_argument("--output-root", default="outputs", help=output_root_help)
    return parser


def settings_or_exit(args: argparse.Namespace) -> RunSettings | int:
    """The preset of ``azure_parser``'s arguments with their overrides; or an exit code after printing why not."""
    try:
        return settings_from_args(args)
    except SettingsError as err:
        print(f"Settings error: {err}", file=sys.stderr)
        return EXIT_INVALID


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


# ---- the data -------------------------------------------------------------------------------------------------
@functools.cache
def _prep_data():
    """components/prep_data/prep_data.py as a module: the fingerprint is prep_data's own, not a copy of it."""
    spec = importlib.util.spec_from_file_location("chatft_prep_data", PREP_DATA_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def data_fingerprint(path: Path) -> tuple[str, int]:
    """(fingerprint, records) of local chat JSONL: the value prep_data writes to split_info.json.

    It depends only on the set of records (not file names, order or line endings), so a model's split_info
    names the data asset version it was trained on.
    """
    prep = _prep_data()
    try:
        source = prep.read_local_records(path)
    except FileNotFoundError as err:  # NoJsonlFilesError included
        raise SubmissionError(f"training data: {err}") from None
    if not source.records:
        raise SubmissionError(f"training data: {path} has no records (only blank lines)")
    digests = [hashlib.sha256(record).digest() for record in source.records]
    return prep.fingerprint(digests), len(source.records)


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


def _sha256_files(paths: list[Path]) -> str:
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
        plans.append(EnvironmentPlan(str(body["name"]), str(body["version"]), spec, _sha256_files([spec.parent])))
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
        content = _sha256_files(sources)
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


# ---- registering ----------------------------------------------------------------------------------------------
def get_or_none(operations, name: str, version: str):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return operations.get(name=name, version=version)
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
        ml_client.data.create_or_update(data)
    print(f"  data asset   {plan.name}:{plan.version} registered ({plan.records} records)")


def ensure_components(ml_client, job, plans: list[ComponentPlan]) -> None:
    """Register each component version once, then point the job's steps at the registered components."""
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
    for node in job.jobs.values():
        # A component object with an id is submitted by reference, as the SDK itself does after registering
        # anonymous components; there is no public setter for a node's component.
        node._component = registered[node.component.name]


def ensure_assets(ml_client, plan: SubmissionPlan) -> None:
    print("Registering (only what is missing):")
    ensure_environments(ml_client, plan.environments)
    if plan.data:
        ensure_data_asset(ml_client, plan.data)
    else:
        print(f"  data         {plan.data_note}")
    ensure_components(ml_client, plan.job, plan.components)


# ---- submit ---------------------------------------------------------------------------------------------------
def prepare(settings: RunSettings, options: SubmitOptions) -> SubmissionPlan | int:
    """The plan, validated; or an exit code after printing why there is none."""
    try:
        plan = plan_submission(settings, options.data)
    except (SubmissionError, SettingsError) as err:
        print(f"Cannot submit: {err}", file=sys.stderr)
        return EXIT_INVALID
    validation = plan.job._validate()  # the SDK's own checks, the same as at submission
    if not validation.passed:
        print(f"Pipeline failed azure-ai-ml validation:\n{validation}", file=sys.stderr)
        return EXIT_INVALID
    return plan


def connect(ml_client=None):
    """The given client, or the configured workspace's; None after printing why there is none."""
    if ml_client is not None:
        return ml_client
    try:
        return workspace_client()
    except WorkspaceConfigError as err:
        print(f"Cannot reach Azure ML: {err}", file=sys.stderr)
        return None


def ready_workspace(plan: SubmissionPlan, options: SubmitOptions, ml_client, action: str, nothing_done: str):
    """What submit and schedule do before creating anything: connect, preflight against the workspace, register
    what is missing. The client to create with; or an exit code after printing why not, in the words of ``action``
    ("Cannot submit: ...") and ``nothing_done`` (what a failed preflight left undone)."""
    from pipelines import preflight

    ml_client = connect(ml_client)
    if ml_client is None:
        return EXIT_INVALID
    report = preflight.run_preflight(plan.settings, plan.data, ml_client=ml_client, options=options)
    print(report.text)
    if not report.ok:
        print(f"Preflight failed: {nothing_done}", file=sys.stderr)
        return EXIT_PREFLIGHT
    try:
        ensure_assets(ml_client, plan)
    except SubmissionError as err:
        print(f"Cannot {action}: {err}", file=sys.stderr)
        return EXIT_INVALID
    return ml_client


def submit(
    settings: RunSettings,
    dry_run: bool,
    output_root: Path,
    ml_client=None,
    stream: bool = True,
    options: SubmitOptions | None = None,
) -> int:
    from pipelines import preflight

    options = options or SubmitOptions(stream=stream)
    plan = prepare(settings, options)
    if isinstance(plan, int):
        return plan
    print_plan(plan, dry_run)
    if dry_run:
        report = preflight.run_preflight(plan.settings, plan.data, ml_client=None, options=options)
        print(report.text)
        path = write_dry_run(plan, output_root)
        print(f"Dry run: resolved pipeline written to {path}, the plan to {path.with_name('submission_plan.json')};")
        print("nothing was created or submitted.")
        return 0

    ml_client = ready_workspace(plan, options, ml_client, "submit", "nothing was created or submitted.")
    if isinstance(ml_client, int):
        return ml_client
    submitted = ml_client.jobs.create_or_update(plan.job, experiment_name=plan.settings.experiment_name)
    print(f"Submitted {submitted.name}: {submitted.studio_url}", flush=True)
    if not options.stream:
        return 0
    ml_client.jobs.stream(submitted.name)  # prints step status until the pipeline ends
    final = ml_client.jobs.get(submitted.name)
    print(f"Pipeline {submitted.name} ended: {final.status}")
    return 1 if final.status in FAILED_STATES else 0
