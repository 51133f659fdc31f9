"""The serverless (Model-as-a-Service) path: the service fine-tunes a catalog model on its own compute.

    python -m pipelines.azure.serverless submit --dry-run  # job YAML (reloaded by the SDK) + plan of calls; no network
    python -m pipelines.azure.serverless submit            # preflight, upload, fine-tune, track, gate, deploy, smoke
    python -m pipelines.azure.serverless preflight         # region, marketplace subscription, cost; no GPU quota
    python -m pipelines.azure.serverless teardown [--delete-subscription]

Exit codes: those of pipelines/azure/cli.py (2 bad settings or data, 3 preflight refused, 4 the job ended Failed or
Canceled), and 5 the quality gate failed on what the service reported, 6 the endpoint failed to deploy or answer.

A submission, in order (nothing is created before step 3):
  1. data: the same prep_data and validate_chat_jsonl components as the pipeline, run locally by the local backend;
     the validated train.jsonl and validation.jsonl are what the service sees;
  2. plan and preflight: the fine-tuning job built with ``azure.ai.ml.finetuning.create_finetuning_job`` (model
     pinned, task chatCompletion, hyper-parameters from pipelines/config/serverless.yaml); the workspace region
     against the regions the model's fine-tuning is offered in, the marketplace subscription, a cost estimate;
  3. register each validated file as a ``uri_file`` data asset whose version is its fingerprint (only if missing);
  4. create the job, print its Studio URL, poll its status until it ends;
  5. on success: the service's reported losses as an eval_report, the quality gate, an MLflow run with the data
     fingerprints; if the gate passed: the MarketplaceSubscription (when the offer needs one and it is missing),
     then the ServerlessEndpoint, then a smoke test with the guide's chat request.
Dry run (``--dry-run``) runs 1 and 2 offline and writes outputs/azure/serverless/: finetuning_job.yml and plan.json.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatft.errors import ChatftError
from pipelines import sdk_private
from pipelines.azure.assets import get_or_none
from pipelines.azure.cli import EXIT_INVALID, EXIT_PREFLIGHT, EXIT_RUN_FAILED
from pipelines.azure.client import WorkspaceConfigError, workspace_client
from pipelines.azure.plan import FINGERPRINT_TAG, VERSION_DIGITS, SubmissionError, data_fingerprint
from pipelines.settings import PROJECT_ROOT, RunSettings, SettingsError, load_settings, project_path

SERVERLESS_PRESET = "pipelines/config/serverless.yaml"
REGIONS_FILE = PROJECT_ROOT / "infra" / "serverless_regions.json"
PRICING_FILE = PROJECT_ROOT / "infra" / "serverless_pricing.json"
# The tag of a registry model that lists where its fine-tuned models can be deployed serverless (read by
# Microsoft's sample notebook chat_completion_with_model_as_service.ipynb).
REGIONS_TAG = "maas-finetuning-deploy-regions"
# Job states (azure.ai.ml JobStatus values) after which nothing changes.
SUCCEEDED, FAILED_STATES = "Completed", {"Failed", "Canceled", "NotResponding"}
DATA_STEPS = {"prep_data", "validate_chat_jsonl"}
# Hyper-parameter names the service documents for Model-as-a-Service fine-tuning, each with where it is documented.
# SDK/CLI samples (azureml-examples .../model-as-a-service/chat-completion): num_train_epochs,
# per_device_train_batch_size, learning_rate. Portal wizard (Learn "Fine-tune models using serverless APIs"):
# batch_size, learning_rate_multiplier, n_epochs.
KNOWN_HYPERPARAMETERS = {
    "num_train_epochs": int,
    "per_device_train_batch_size": int,
    "learning_rate": float,
    "n_epochs": int,
    "batch_size": int,
    "learning_rate_multiplier": float,
}
EPOCH_KEYS = ("num_train_epochs", "n_epochs")
# The guide's request, in the OpenAI chat-completions shape serverless endpoints take (/v1/chat/completions).
SMOKE_REQUEST = {
    "messages": [{"role": "user", "content": "How do I restart my router?"}],
    "temperature": 0.7,
    "max_tokens": 128,
}
# Exit codes (module docstring): a failed job is cli's EXIT_RUN_FAILED; a failed gate and a failed deployment are ours.
EXIT_JOB_FAILED, EXIT_GATE, EXIT_DEPLOY = EXIT_RUN_FAILED, 5, 6


class ServerlessError(ChatftError, RuntimeError):
    """Something the serverless path cannot do; the message says what and what to do."""


# ---- settings -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerlessSettings:
    """``serverless`` in pipelines/config/serverless.yaml (see the comments there)."""

    task: str
    hyperparameters: dict[str, str]
    output_model_name_prefix: str
    endpoint_name: str
    marketplace_subscription: bool
    subscription_name: str
    poll_seconds: float = 30.0
    metrics: dict[str, str] = field(
        default_factory=lambda: {"training_loss": "train_loss", "validation_loss": "eval_loss"}
    )
    max_champion_ratio: float = 1.0

    @property
    def epochs(self) -> int:
        return next((int(self.hyperparameters[k]) for k in EPOCH_KEYS if k in self.hyperparameters), 1)


def serverless_settings(settings: RunSettings) -> ServerlessSettings:
    """The checked ``serverless`` section; every problem names the file and the key."""
    from azure.ai.ml.finetuning import FineTuningTaskType

    where = settings.source
    raw = settings.serverless
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: needs a 'serverless' section (see {SERVERLESS_PRESET})")
    known = {"task", "hyperparameters", "output_model_name_prefix", "endpoint_name", "marketplace_subscription"}
    known |= {"subscription_name", "poll_seconds", "metrics", "max_champion_ratio"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(
            f"{where}: unknown key(s) serverless.{', '.join(unknown)}; expected some of {sorted(known)}"
        )
    missing = [k for k in ("task", "hyperparameters", "output_model_name_prefix", "endpoint_name") if not raw.get(k)]
    if missing:
        raise SettingsError(f"{where}: serverless needs {', '.join(missing)}")
    tasks = {v for k, v in vars(FineTuningTaskType).items() if not k.startswith("_")}
    if raw["task"] not in tasks:
        raise SettingsError(f"{where}: serverless.task {raw['task']!r} is not one of {sorted(tasks)}")
    hyper = raw["hyperparameters"]
    if not isinstance(hyper, dict):
        raise SettingsError(f"{where}: serverless.hyperparameters must map names to numbers")
    checked = {}
    for name, value in hyper.items():
        kind = KNOWN_HYPERPARAMETERS.get(name)
        if kind is None:
            raise SettingsError(
                f"{where}: serverless.hyperparameters.{name} is not a documented serverless hyper-parameter "
                f"(known: {', '.join(KNOWN_HYPERPARAMETERS)})"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or kind(value) != value:
            raise SettingsError(
                f"{where}: serverless.hyperparameters.{name}={value!r} must be a positive {kind.__name__}"
            )
        checked[name] = str(kind(value))  # the service takes a string → string map
    if base_model_version(settings.base_model) is None:
        raise SettingsError(
            f"{where}: base_model {settings.base_model!r} must be a registry model with a pinned version "
            "(azureml://registries/<registry>/models/<name>/versions/<n>)"
        )
    metrics = raw.get("metrics") or {}
    if set(metrics) - {"training_loss", "validation_loss"}:
        raise SettingsError(f"{where}: serverless.metrics takes training_loss and validation_loss only")
    return ServerlessSettings(
        task=raw["task"],
        hyperparameters=checked,
        output_model_name_prefix=str(raw["output_model_name_prefix"]),
        endpoint_name=str(raw["endpoint_name"]),
        marketplace_subscription=bool(raw.get("marketplace_subscription", False)),
        subscription_name=str(raw.get("subscription_name") or f"{settings.base_model_name.lower()}-sub"),
        poll_seconds=float(raw.get("poll_seconds", 30)),
        metrics={"training_loss": "train_loss", "validation_loss": "eval_loss", **metrics},
        max_champion_ratio=float(raw.get("max_champion_ratio", 1.0)),
    )


def base_model_version(uri: str) -> tuple[str, str, str] | None:
    """(registry, name, version) of ``azureml://registries/<r>/models/<name>/versions/<v>``, else None."""
    match = re.fullmatch(r"azureml://registries/([^/]+)/models/([^/]+)/versions/([^/]+)", uri)
    return match.groups() if match else None


def check_data_steps(settings: RunSettings) -> None:
    extra = sorted(set(settings.steps) - DATA_STEPS)
    if extra:
        raise SettingsError(
            f"{settings.source}: steps.{', '.join(extra)} do not run on the serverless path (the service trains); "
            f"only {', '.join(sorted(DATA_STEPS))} may be set"
        )


# ---- 1. the data: prep_data and validate_chat_jsonl, locally ---------------------------------------------------
@dataclass(frozen=True)
class ValidatedFile:
    split: str  # "train" or "validation"
    path: Path
    fingerprint: str
    records: int
    asset_name: str

    @property
    def version(self) -> str:
        return self.fingerprint[:VERSION_DIGITS]

    @property
    def uri(self) -> str:
        return f"azureml:{self.asset_name}:{self.version}"


@dataclass(frozen=True)
class ValidatedData:
    train: ValidatedFile
    validation: ValidatedFile
    split_info: dict

    @property
    def files(self) -> tuple[ValidatedFile, ValidatedFile]:
        return self.train, self.validation


def build_data_pipeline(settings: RunSettings):
    """prep_data → validate_chat_jsonl (train, and validation against train for leakage): the pipeline's own first
    three steps, wired the same way, without the steps the service replaces."""
    from azure.ai.ml import dsl

    from pipelines.finetune_pipeline import _as_input, check_step_settings, load_components

    components = load_components()
    check_step_settings(settings, components)
    prep_data, validate = components["prep_data"], components["validate_chat_jsonl"]

    @dsl.pipeline(name="chat_data_serverless", description="prep → validate, for serverless fine-tuning")
    def chat_data(raw_data=None):
        splits = prep_data(raw_data=raw_data, **settings.step("prep_data"))
        valid_train = validate(input_data=splits.outputs.train_data, **settings.step("validate_chat_jsonl"))
        valid_validation = validate(
            input_data=splits.outputs.validation_data,
            reference_data=splits.outputs.train_data,  # a validation chat also in train is leakage
            **settings.step("validate_chat_jsonl"),
        )
        return {
            "train_data": valid_train.outputs.valid_data,
            "validation_data": valid_validation.outputs.valid_data,
            "split_info": splits.outputs.split_info,
        }

    return chat_data(raw_data=_as_input(settings.raw_data))


def prepare_data(settings: RunSettings, output_root: Path, quiet: bool = False) -> ValidatedData:
    """Run the data steps with the local backend (reused when nothing changed) and fingerprint what they accepted."""
    from pipelines.local_backend import LocalBackend, LocalRunError

    if not settings.raw_data or settings.raw_data.startswith("azureml:") or "://" in settings.raw_data:
        raise SubmissionError(
            f"{settings.source}: raw_data must be local chat JSONL for the serverless path "
            f"(got {settings.raw_data!r}); the validated files are uploaded from here"
        )
    job = build_data_pipeline(settings)
    backend = LocalBackend(output_root, PROJECT_ROOT, stream_logs=not quiet)
    try:
        result = backend.run(job, settings.experiment_name)
    except LocalRunError as err:
        raise SubmissionError(f"data validation failed: {err}") from None
    files = []
    for split in ("train", "validation"):
        found = sorted(result.outputs[f"{split}_data"].rglob("*.jsonl"))
        if len(found) != 1:
            raise SubmissionError(f"validate_chat_jsonl ({split}) wrote {len(found)} JSONL files; expected one")
        fingerprint, records = data_fingerprint(found[0])
        files.append(ValidatedFile(split, found[0], fingerprint, records, f"{settings.azure.data_asset_name}-{split}"))
    split_info = json.loads((result.outputs["split_info"] / "split_info.json").read_text(encoding="utf-8"))
    return ValidatedData(files[0], files[1], split_info)


# ---- 2. the job, the plan, preflight ---------------------------------------------------------------------------
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


def load_json_with_override(path: Path, override: Path | None) -> dict:
    from pipelines.preflight import _merge

    data = json.loads(path.read_text(encoding="utf-8"))
    if override:
        try:
            data = _merge(data, json.loads(Path(override).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise SettingsError(f"--pricing {override}: {err}") from None
    return data


def normalize_region(region: str) -> str:
    return region.replace(" ", "").lower()


def offered_regions(settings: RunSettings, registry_client=None) -> tuple[list[str], str]:
    """(regions, where the list came from): the model's catalog tag when the SDK can read it, else the file."""
    registry, name, version = base_model_version(settings.base_model)
    if registry_client is not None:
        model = registry_client.models.get(name=name, version=version)
        tag = (model.tags or {}).get(REGIONS_TAG)
        if tag:
            # The tag is a list as text; accept "a,b", "a, b" and '["a","b"]'.
            regions = [normalize_region(r) for r in re.split(r"[\s,\[\]\"']+", tag) if r]
            return regions, f"catalog tag {REGIONS_TAG} of {name}:{version} in registry {registry}"
    table = json.loads(REGIONS_FILE.read_text(encoding="utf-8"))
    regions = table["regions"].get(name)
    if regions is None:
        raise ServerlessError(
            f"{REGIONS_FILE.relative_to(PROJECT_ROOT)} does not list {name}, and its catalog entry names no regions: "
            f"add it there from the model's catalog page"
        )
    return [normalize_region(r) for r in regions], f"{REGIONS_FILE.relative_to(PROJECT_ROOT)} ({table['retrieved']})"


@dataclass
class CostEstimate:
    lines: list[str]
    training_tokens: int


def estimate_tokens(path: Path, assumptions: dict) -> int:
    """Content characters / chars_per_token + template tokens per message, over one file (no tokenizer needed)."""
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            messages = json.loads(line)["messages"]
            chars = sum(len(m.get("content") or "") for m in messages)
            total += math.ceil(chars / float(assumptions["chars_per_token"]))
            total += int(assumptions["template_tokens_per_message"]) * len(messages)
    return total


def estimate_cost(serverless: ServerlessSettings, data: ValidatedData, pricing: dict) -> CostEstimate:
    prices, usage = pricing["prices"], pricing["usage"]
    per_epoch = estimate_tokens(data.train.path, pricing["tokens"])
    tokens = per_epoch * serverless.epochs
    lines = [
        f"training tokens ≈ {tokens:,} ({per_epoch:,} per epoch × {serverless.epochs} epoch(s); characters / "
        f"{pricing['tokens']['chars_per_token']:g} + template tokens, an estimate)"
    ]

    def cost(label: str, price_key: str, amount: float, unit: str) -> float | None:
        price = prices.get(price_key)
        if price is None:
            lines.append(f"{label}: price unknown ({price_key} is null in the pricing file: fill it in)")
            return None
        value = price * amount
        lines.append(f"{label}: {amount:,.1f} {unit} × {price:g} = {value:,.2f} {pricing['currency']}")
        return value

    requests = usage["requests"]
    parts = [
        cost("training", "training_per_1k_tokens", tokens / 1000, "k tokens"),
        cost("hosting", "hosting_per_hour", usage["hosting_hours"], "h deployed"),
        cost("inference in", "input_per_1k_tokens", requests * usage["input_tokens_per_request"] / 1000, "k tokens"),
        cost("inference out", "output_per_1k_tokens", requests * usage["output_tokens_per_request"] / 1000, "k tokens"),
    ]
    if all(p is not None for p in parts):
        lines.append(f"total ≈ {sum(parts):,.2f} {pricing['currency']} (assumptions: {PRICING_FILE.name})")
    else:
        lines.append(f"total: not estimated, some prices are unknown (source: {prices['_source'][:90]}...)")
    return CostEstimate(lines, tokens)


@dataclass
class Preflight:
    ok: bool
    lines: list[str]
    region: str | None = None
    subscription_missing: bool = False

    @property
    def text(self) -> str:
        return "\n".join(["Preflight (serverless):", *[f"  {line}" for line in self.lines]])


def run_preflight(
    settings: RunSettings,
    serverless: ServerlessSettings,
    data: ValidatedData,
    pricing: dict,
    ml_client=None,
    registry_client=None,
) -> Preflight:
    """Region, subscription, cost. Offline (no client) it checks what it can and says what it could not."""
    lines = ["GPU quota: none needed; the service fine-tunes and serves on its own capacity (no cluster is used)"]
    ok = True
    regions, source = offered_regions(settings, registry_client)
    region = None
    if ml_client is None:
        lines.append(
            f"region: not checked offline; {settings.base_model_name} fine-tuning is offered in "
            f"{', '.join(regions)} ({source})"
        )
    else:
        region = normalize_region(ml_client.workspaces.get(ml_client.workspace_name).location)
        if region in regions:
            lines.append(
                f"region: workspace in {region}, where {settings.base_model_name} fine-tuning is offered ({source})"
            )
        else:
            ok = False
            lines.append(
                f"region: FAILED: the workspace is in {region}, but serverless fine-tuning of "
                f"{settings.base_model_name} is offered only in {', '.join(regions)} ({source}); create a workspace "
                "there (make infra with location set) or pick a model offered here"
            )
    missing = False
    if not serverless.marketplace_subscription:
        lines.append(f"marketplace subscription: not needed ({settings.base_model_name} is a Microsoft offer)")
    elif ml_client is None:
        lines.append(f"marketplace subscription: {serverless.subscription_name} not checked offline")
    else:
        existing = _get_or_none(ml_client.marketplace_subscriptions, serverless.subscription_name)
        missing = existing is None
        state = "missing: created after training, before the endpoint" if missing else f"exists ({existing.status})"
        lines.append(f"marketplace subscription: {serverless.subscription_name} {state}")
    lines += [
        "cost (assumptions, not measured):",
        *[f"  {line}" for line in estimate_cost(serverless, data, pricing).lines],
    ]
    return Preflight(ok, lines, region, missing)


def _get_or_none(operations, name: str):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return operations.get(name)
    except ResourceNotFoundError:
        return None


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


# ---- 3-5. against the workspace --------------------------------------------------------------------------------
def ensure_data_files(ml_client, data: ValidatedData) -> None:
    """Each validated file as a uri_file asset, version = its fingerprint: unchanged data is never uploaded again."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    for file in data.files:
        if get_or_none(ml_client.data, file.asset_name, file.version) is not None:
            print(f"  data asset   {file.asset_name}:{file.version} unchanged (already registered)")
            continue
        ml_client.data.create_or_update(
            Data(
                name=file.asset_name,
                version=file.version,
                type=AssetTypes.URI_FILE,
                path=str(file.path),
                description=f"Validated chat JSONL ({file.split}), {file.records} records; version = fingerprint.",
                tags={
                    FINGERPRINT_TAG: file.fingerprint,
                    "records": str(file.records),
                    "source_fingerprint": data.split_info.get("fingerprint", ""),
                },
            )
        )
        print(f"  data asset   {file.asset_name}:{file.version} registered ({file.records} records)")


def job_state(job) -> str:
    """The job's status as the service spells it ("Completed"); the SDK hands back a str-valued enum."""
    return str(getattr(job.status, "value", job.status))


def poll(ml_client, name: str, every: float, sleep=time.sleep):
    """Print each status change until the job ends; the final job. Errors from the service propagate."""
    last = None
    while True:
        job = ml_client.jobs.get(name)
        state = job_state(job)
        if state != last:
            print(f"  {time.strftime('%H:%M:%S')} {name}: {state}", flush=True)
            last = state
        if state == SUCCEEDED or state in FAILED_STATES:
            return job
        sleep(every)


def read_service_metrics(tracking_uri: str, run_id: str, names: dict[str, str]) -> dict[str, list[float]]:
    """The loss series the service's run logged (Azure ML jobs are MLflow runs whose run id is the job name)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    series = {}
    for label, key in names.items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        series[label] = [m.value for m in history]
    return series


def champion_perplexity(tracking_uri: str, experiment_name: str) -> tuple[float, str] | None:
    """The best validation perplexity of earlier serverless runs whose gate passed, with its run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.chatft_path = 'serverless' and metrics.quality_gate_passed = 1",
        order_by=["metrics.tuned_perplexity ASC"],
        max_results=1,
    )
    if not runs or "tuned_perplexity" not in runs[0].data.metrics:
        return None
    return runs[0].data.metrics["tuned_perplexity"], runs[0].info.run_id


def eval_report(plan: Plan, job_name: str, series: dict[str, list[float]], champion) -> dict:
    """The service's losses in the pipeline's eval_report form, and the gate on what they allow to check."""
    validation, training = series.get("validation_loss") or [], series.get("training_loss") or []
    checks = [
        {
            "name": "beats_base",
            "ran": False,
            "passed": None,
            "detail": "the service reports no loss of the base model on this data, so base vs tuned is not compared",
        },
    ]
    tuned = {}
    if not validation or not all(math.isfinite(v) for v in validation):
        checks.append(
            {
                "name": "validation_loss_reported",
                "ran": True,
                "passed": False,
                "detail": f"the job logged no finite {plan.serverless.metrics['validation_loss']!r} series",
            }
        )
    else:
        tuned = {"loss": validation[-1], "perplexity": math.exp(validation[-1])}
        if len(validation) > 1:
            fell = validation[-1] <= validation[0]
            checks.append(
                {
                    "name": "validation_loss_fell",
                    "ran": True,
                    "passed": fell,
                    "detail": f"validation loss {validation[0]:.4f} → {validation[-1]:.4f} during training",
                }
            )
        if champion is None:
            checks.append(
                {
                    "name": "no_regression_vs_champion",
                    "ran": False,
                    "passed": None,
                    "detail": "no earlier serverless run passed the gate",
                }
            )
        else:
            limit = plan.serverless.max_champion_ratio * champion[0]
            passed = tuned["perplexity"] <= limit
            checks.append(
                {
                    "name": "no_regression_vs_champion",
                    "ran": True,
                    "passed": passed,
                    "detail": f"tuned perplexity {tuned['perplexity']:.3f} {'<=' if passed else '>'} "
                    f"{plan.serverless.max_champion_ratio:g} × champion run {champion[1]} "
                    f"perplexity {champion[0]:.3f}",
                }
            )
    if training:
        tuned["train_loss"] = training[-1]
    failed = [c for c in checks if c["ran"] and not c["passed"]]
    reason = "; ".join(c["detail"] for c in (failed or checks))
    return {
        "base_model": plan.settings.base_model,
        "tuned_model": f"{plan.serverless.output_model_name_prefix} (job {job_name})",
        "validation_chats": plan.data.validation.records,
        "metrics": {"tuned": tuned},
        "metric_series": series,
        "reported_by": "the serverless fine-tuning service (its MLflow run), not measured by this project",
        "quality_gate": {
            "passed": not failed,
            "reason": reason,
            "checks": checks,
            "max_champion_ratio": plan.serverless.max_champion_ratio,
        },
        "samples": [],
    }


def track(plan: Plan, job, report: dict, tracking_uri: str, folder: Path) -> str:
    """One MLflow run like the pipeline's: parameters, the data fingerprints, the reported metrics, the report."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(plan.settings.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(plan.settings.experiment_name)
    run = client.create_run(
        experiment_id,
        run_name=f"serverless-{job.name}",
        tags={
            "chatft_path": "serverless",
            "job_name": job.name,
            "studio_url": job.studio_url or "",
            FINGERPRINT_TAG: plan.data.split_info.get("fingerprint", ""),
            "train_fingerprint": plan.data.train.fingerprint,
            "validation_fingerprint": plan.data.validation.fingerprint,
            "base_model": plan.settings.base_model,
            "quality_gate": f"{'passed' if report['quality_gate']['passed'] else 'failed'}: "
            f"{report['quality_gate']['reason']}"[:5000],
        },
    )
    run_id = run.info.run_id
    for name, value in {**plan.serverless.hyperparameters, "task": plan.job.task}.items():
        client.log_param(run_id, name, value)
    for label, values in report["metric_series"].items():
        for step, value in enumerate(values):
            client.log_metric(run_id, label, value, step=step)
    for name, value in report["metrics"]["tuned"].items():
        client.log_metric(run_id, f"tuned_{name}", value)
    client.log_metric(run_id, "quality_gate_passed", float(report["quality_gate"]["passed"]))
    client.log_artifact(run_id, str(folder / "eval_report.json"), artifact_path="eval_report")
    client.set_terminated(run_id)
    return run_id


def fine_tuned_model_id(ml_client, job) -> str:
    """The workspace model the job registered, as serverless endpoints take it (the sample notebook's form)."""
    output = (job.outputs or {}).get("registered_model")
    name = getattr(output, "name", None) or (output or {}).get("name")
    if not name:
        raise ServerlessError(f"job {job.name} ended without a registered_model output; see {job.studio_url}")
    workspace = ml_client.workspaces.get(ml_client.workspace_name)
    guid = sdk_private.workspace_guid(workspace)
    return f"azureml://locations/{workspace.location}/workspaces/{guid}/models/{name}/versions/1"


def deploy(ml_client, plan: Plan, model_id: str) -> Any:
    """The MarketplaceSubscription first when the offer needs one and it is missing, then the ServerlessEndpoint."""
    from azure.ai.ml.entities import MarketplaceSubscription, ServerlessEndpoint

    serverless = plan.serverless
    if serverless.marketplace_subscription:
        if _get_or_none(ml_client.marketplace_subscriptions, serverless.subscription_name) is None:
            offer = "/".join(plan.settings.base_model.split("/")[:-2])  # the model id without /versions/<n>
            print(f"  subscribing {serverless.subscription_name} to the marketplace offer of {offer} ...", flush=True)
            ml_client.marketplace_subscriptions.begin_create_or_update(
                MarketplaceSubscription(name=serverless.subscription_name, model_id=offer)
            ).result()
        else:
            print(f"  marketplace subscription {serverless.subscription_name} exists")
    print(f"  creating serverless endpoint {serverless.endpoint_name} for {model_id} ...", flush=True)
    endpoint = ml_client.serverless_endpoints.begin_create_or_update(
        ServerlessEndpoint(name=serverless.endpoint_name, model_id=model_id)
    ).result()
    if (endpoint.provisioning_state or "").lower() != "succeeded":
        raise ServerlessError(f"serverless endpoint {serverless.endpoint_name}: {endpoint.provisioning_state}")
    return endpoint


def chat_completions(url: str, key: str, body: dict, timeout: float = 120) -> dict:
    """POST an OpenAI chat-completions request to a serverless endpoint (the key as Authorization, as the sample)."""
    import requests

    response = requests.post(
        f"{url.rstrip('/')}/v1/chat/completions",
        json=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise ServerlessError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def smoke_test(ml_client, name: str) -> str:
    endpoint = ml_client.serverless_endpoints.get(name)
    key = ml_client.serverless_endpoints.get_keys(name).primary_key
    reply = chat_completions(endpoint.scoring_uri, key, SMOKE_REQUEST)
    try:
        answer = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ServerlessError(f"{endpoint.scoring_uri}: not a chat-completions answer: {str(reply)[:300]}") from None
    if not answer.strip():
        raise ServerlessError(f"{endpoint.scoring_uri}: empty answer to the smoke test")
    return answer


def submit(settings: RunSettings, dry_run: bool, output_root: Path, pricing: Path | None = None, **kwargs) -> int:
    """Plan (the data steps run locally), then ``submit_plan``; an exit code."""
    try:
        plan = make_plan(settings, output_root)
    except (SettingsError, SubmissionError) as err:
        print(f"Cannot submit: {err}", file=sys.stderr)
        return EXIT_INVALID
    return submit_plan(plan, dry_run, output_root, pricing=pricing, **kwargs)


def submit_plan(
    plan: Plan,
    dry_run: bool,
    output_root: Path,
    ml_client=None,
    registry_client=None,
    tracking_uri: str | None = None,
    pricing: Path | None = None,
    metrics_reader=None,
    sleep=time.sleep,
) -> int:
    """Preflight, register, submit, poll, track, gate, deploy, smoke-test (see the module docstring).

    ``metrics_reader(job_name) -> {"training_loss": [...], "validation_loss": [...]}`` defaults to the job's MLflow
    run in ``tracking_uri`` (the workspace's, unless given)."""
    settings = plan.settings
    try:
        prices = load_json_with_override(PRICING_FILE, pricing)
    except SettingsError as err:
        print(f"Cannot submit: {err}", file=sys.stderr)
        return EXIT_INVALID
    files = ", ".join(f"{f.asset_name}:{f.version} ({f.records} records)" for f in plan.data.files)
    print(f"Serverless fine-tuning of {settings.base_model} ({plan.job.task}), data {files}")
    if dry_run:
        print(run_preflight(settings, plan.serverless, plan.data, prices).text)
        path = write_dry_run(plan, output_root)
        print(
            f"Dry run: job written to {path} (reloaded and validated by the SDK), the plan to "
            f"{path.with_name('plan.json')}; nothing was created or submitted."
        )
        return 0

    if ml_client is None:
        try:
            ml_client = workspace_client()
        except WorkspaceConfigError as err:
            print(f"Cannot reach Azure ML: {err}", file=sys.stderr)
            return EXIT_INVALID
    if registry_client is None:
        registry_client = registry_client_for(settings, ml_client)
    try:
        report = run_preflight(settings, plan.serverless, plan.data, prices, ml_client, registry_client)
    except ServerlessError as err:
        print(f"Preflight failed: {err}; nothing was created or submitted.", file=sys.stderr)
        return EXIT_PREFLIGHT
    print(report.text)
    if not report.ok:
        print("Preflight failed: nothing was created or submitted.", file=sys.stderr)
        return EXIT_PREFLIGHT

    print("Registering (only what is missing):")
    ensure_data_files(ml_client, plan.data)
    submitted = ml_client.jobs.create_or_update(plan.job, experiment_name=settings.experiment_name)
    print(f"Submitted {submitted.name}: {submitted.studio_url}", flush=True)
    final = poll(ml_client, submitted.name, plan.serverless.poll_seconds, sleep=sleep)
    if job_state(final) != SUCCEEDED:
        print(f"Fine-tuning job {final.name} ended: {job_state(final)}; see {final.studio_url}", file=sys.stderr)
        return EXIT_JOB_FAILED

    tracking_uri = tracking_uri or ml_client.workspaces.get(ml_client.workspace_name).mlflow_tracking_uri
    if metrics_reader is None:

        def metrics_reader(job_name: str) -> dict[str, list[float]]:
            return read_service_metrics(tracking_uri, job_name, plan.serverless.metrics)

    series = metrics_reader(final.name)
    result = eval_report(plan, final.name, series, champion_perplexity(tracking_uri, settings.experiment_name))
    folder = output_root / "azure" / "serverless" / final.name
    run_id = track(plan, final, result, tracking_uri, folder / "eval_report")
    gate = result["quality_gate"]
    print(f"Quality gate: {'passed' if gate['passed'] else 'FAILED'}: {gate['reason']}")
    print(f"  tracked as MLflow run {run_id}; report {folder / 'eval_report' / 'eval_report.json'}")
    if not gate["passed"]:
        print("Not deployed: the quality gate failed.", file=sys.stderr)
        return EXIT_GATE

    try:
        endpoint = deploy(ml_client, plan, fine_tuned_model_id(ml_client, final))
        answer = smoke_test(ml_client, plan.serverless.endpoint_name)
    except ServerlessError as err:
        print(f"Deployment failed: {err}", file=sys.stderr)
        return EXIT_DEPLOY
    print(f"Endpoint {plan.serverless.endpoint_name}: {endpoint.scoring_uri}")
    print(f"Smoke test ({SMOKE_REQUEST['messages'][0]['content']!r}): {answer[:200]}")
    print("Talk to it: make chat TARGET=serverless; delete it: make teardown TARGET=serverless (it bills hourly).")
    return 0


def registry_client_for(settings: RunSettings, ml_client):
    """An MLClient on the model's registry, built with the workspace client's credential (it discovers the registry
    on construction)."""
    from azure.ai.ml import MLClient

    registry, _, _ = base_model_version(settings.base_model)
    return MLClient(sdk_private.client_credential(ml_client), registry_name=registry)


def teardown(settings: RunSettings, delete_subscription: bool, ml_client=None, name: str | None = None) -> int:
    """Delete the serverless endpoint (it bills by the hour while deployed); the subscription only when asked."""
    serverless = serverless_settings(settings)
    name = name or serverless.endpoint_name
    ml_client = ml_client or workspace_client()
    if _get_or_none(ml_client.serverless_endpoints, name) is None:
        print(f"{name} does not exist (nothing to delete)")
    else:
        print(f"deleting the serverless endpoint {name} ...", flush=True)
        ml_client.serverless_endpoints.begin_delete(name).result()
        print(f"deleted {name}")
    if delete_subscription:
        ml_client.marketplace_subscriptions.begin_delete(serverless.subscription_name).result()
        print(f"deleted the marketplace subscription {serverless.subscription_name}")
    else:
        print("the marketplace subscription (if any) and the fine-tuned model stay (--delete-subscription deletes it)")
    return 0


# ---- command line ----------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["submit", "preflight", "teardown"])
    parser.add_argument("--config", default=SERVERLESS_PRESET, help=f"preset YAML (default: {SERVERLESS_PRESET})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STEP.INPUT=VALUE",
        help="override a data step input (prep_data.*, validate_chat_jsonl.*)",
    )
    parser.add_argument("--data", help="local chat JSONL file or folder instead of the preset's raw_data")
    parser.add_argument("--dry-run", action="store_true", help="submit: write the job YAML and plan; no network")
    parser.add_argument("--output-root", default="outputs", help="where the data steps and the dry run write")
    parser.add_argument("--pricing", help="JSON overriding infra/serverless_pricing.json")
    parser.add_argument(
        "--delete-subscription", action="store_true", help="teardown: also the marketplace subscription"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    from dataclasses import replace

    try:
        settings = load_settings(project_path(args.config), args.overrides)
        if args.data:
            settings = replace(settings, raw_data=args.data)
    except SettingsError as err:
        print(f"Settings error: {err}", file=sys.stderr)
        return EXIT_INVALID
    output_root = project_path(args.output_root)
    if args.command == "teardown":
        return teardown(settings, args.delete_subscription)
    if args.command == "submit":
        return submit(settings, args.dry_run, output_root, pricing=Path(args.pricing) if args.pricing else None)
    try:
        plan = make_plan(settings, output_root)
        prices = load_json_with_override(PRICING_FILE, Path(args.pricing) if args.pricing else None)
    except (SettingsError, SubmissionError) as err:
        print(f"Cannot check: {err}", file=sys.stderr)
        return EXIT_INVALID
    ml_client = registry_client = None
    if not args.dry_run:
        ml_client = workspace_client()
        registry_client = registry_client_for(settings, ml_client)
    report = run_preflight(settings, plan.serverless, plan.data, prices, ml_client, registry_client)
    print(report.text)
    return 0 if report.ok else EXIT_PREFLIGHT


if __name__ == "__main__":
    sys.exit(main(parse_args()))
