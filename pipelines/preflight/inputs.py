"""What preflight works from, each read once: the pricing assumptions (infra/pricing.json), the components' input
defaults (their component.yml, the one home of defaults) and the pipeline's topology: which steps run on which
cluster, read from the built pipeline job (each node's ``compute``, else the job's default compute)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatft.errors import UsageError
from pipelines.azure.overrides import load_json_with_override
from pipelines.settings import PROJECT_ROOT, RunSettings

PRICING_FILE = PROJECT_ROOT / "infra" / "pricing.json"


class PreflightError(UsageError, ValueError):
    """Preflight cannot estimate or check something; the message says what to pass or fix."""


def load_pricing(override: Path | None = None) -> dict[str, Any]:
    """infra/pricing.json, with an optional override file (same shape, any subset of keys) merged over it."""
    return load_json_with_override(PRICING_FILE, override, PreflightError)


@functools.cache
def components() -> dict[str, Any]:
    """The component specs of components/, loaded once per process."""
    from pipelines.finetune_pipeline import load_components

    return load_components()


def setting(settings: RunSettings, component: str, name: str) -> Any:
    """A step input as the run gets it: the preset's value, else the component's default."""
    value = settings.step(component).get(name)
    return components()[component].inputs[name].default if value is None else value


@dataclass(frozen=True)
class Topology:
    """Where each step of the pipeline runs: cluster name → the components of the nodes on it, in pipeline order
    (a component used twice, like validate_chat_jsonl, is listed twice)."""

    steps: dict[str, list[str]]
    training: str  # the cluster the finetune step runs on
    training_nodes: int

    def on(self, cluster: dict) -> list[str]:
        return self.steps.get(cluster["name"], [])


def topology(job) -> Topology:
    """The topology of a built PipelineJob (``pipelines.finetune_pipeline.build_pipeline``)."""
    default = job.settings.default_compute
    steps: dict[str, list[str]] = {}
    training, nodes = None, 1
    for node in job.jobs.values():
        cluster = node.compute or default
        steps.setdefault(cluster, []).append(node.component.name)
        if node.component.name == "finetune":
            training = cluster
            nodes = int(getattr(node.resources, "instance_count", None) or 1)
    if training is None:
        raise PreflightError("the pipeline has no finetune step to estimate training time for")
    return Topology(steps, training, nodes)


def pipeline_topology(settings: RunSettings) -> Topology:
    """The topology of the pipeline these settings build (the components loaded once)."""
    from pipelines.finetune_pipeline import build_pipeline

    return topology(build_pipeline(settings, components=components()))
