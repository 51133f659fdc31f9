"""The serverless path's settings (the ``serverless`` section of pipelines/config/serverless.yaml), its constants
and its errors, each carrying the exit code of the module docstring of ``pipelines.azure.serverless``."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from chatft.errors import ChatftError
from pipelines.azure.cli import EXIT_RUN_FAILED
from pipelines.settings import PROJECT_ROOT, RunSettings, SettingsError

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


class GateFailed(ChatftError):
    """The quality gate failed on what the service reported: the run is tracked, nothing is deployed."""

    exit_code = EXIT_GATE


class DeployFailed(ChatftError):
    """The serverless endpoint failed to deploy or to answer the smoke test."""

    exit_code = EXIT_DEPLOY


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
