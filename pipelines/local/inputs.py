"""A pipeline's steps in dependency order, and each step's inputs: the value its command gets and what identifies
that value for the step cache (an upstream output's hash, a local path's content hash, a checked literal)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines import sdk_private
from pipelines.local.cache import output_hash
from pipelines.local.hashing import FileHashMemo, hash_path
from pipelines.local.results import LocalRunError, StepResult

PATH_TYPES = ("uri_folder", "uri_file", "custom_model", "mlflow_model")


def topological_order(jobs: dict[str, Any]) -> list[str]:
    deps = {name: {_upstream(v) for v in node.inputs.values()} - {None} for name, node in jobs.items()}
    order: list[str] = []
    while deps:
        ready = [name for name, needs in deps.items() if needs <= set(order)]
        if not ready:
            raise LocalRunError(f"pipeline has a dependency cycle among: {', '.join(deps)}")
        for name in ready:  # keep the pipeline's own order among ready steps
            order.append(name)
            del deps[name]
    return order


def _upstream(node_input) -> str | None:
    binding = sdk_private.input_binding(node_input)
    return sdk_private.upstream_step(binding) if sdk_private.binding_kind(binding) == "output" else None


def path_inputs(component) -> frozenset[str]:
    """The inputs whose values are paths (quoted in the command)."""
    return frozenset(k for k, spec in component.inputs.items() if spec.type in PATH_TYPES)


class InputResolver:
    """Resolves a step's inputs against the steps done so far; local paths must be in the project or output root."""

    def __init__(self, project_root: Path, output_root: Path, memo: FileHashMemo):
        self.project_root, self.output_root, self.memo = project_root, output_root, memo

    def resolve(self, job, name: str, done: dict[str, StepResult]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Values to substitute, and what identifies each one for the cache (content hashes, literals)."""
        from azure.ai.ml import Input

        node = job.jobs[name]
        values: dict[str, Any] = {}
        identity: dict[str, Any] = {}
        for input_name, spec in node.component.inputs.items():
            data = sdk_private.input_binding(node.inputs[input_name]) if input_name in node.inputs else None
            if sdk_private.binding_kind(data) == "output":  # an upstream step's output
                upstream, port = done[sdk_private.upstream_step(data)], sdk_private.port_name(data)
                values[input_name] = str(upstream.outputs[port])
                identity[input_name] = output_hash(upstream, port, self.memo)
                continue
            if sdk_private.binding_kind(data) == "pipeline":  # bound to a pipeline-level input
                port = sdk_private.port_name(data)
                data = sdk_private.input_binding(job.inputs[port]) if port in job.inputs else None
            if isinstance(data, Input):
                data = data.path
                if data is not None:
                    path = self.local_path(name, input_name, str(data))
                    values[input_name] = str(path)
                    identity[input_name] = hash_path(path, self.memo)
                    continue
            values[input_name] = identity[input_name] = _literal_or_default(name, input_name, spec, data)
        return values, identity

    def local_path(self, step: str, input_name: str, value: str) -> Path:
        if value.startswith("azureml:") or "://" in value:
            raise LocalRunError(
                f"step {step}: input {input_name} points at an Azure asset ({value}); "
                "the local backend needs a local path (see pipelines/config/local.yaml)"
            )
        path = Path(value)
        path = path if path.is_absolute() else self.project_root / path
        if not path.exists():
            raise LocalRunError(f"step {step}: input {input_name}: {path} does not exist")
        if not _within(path, [self.project_root, self.output_root]):
            raise LocalRunError(
                f"step {step}: input {input_name}: {path} is outside the project and the output root; "
                "copy it under data/ or point --output-root at a folder that contains it"
            )
        return path


def _literal_or_default(step: str, input_name: str, spec, data):
    """A literal (or the spec's default) checked against the spec; None for an unset optional input."""
    if data is None:
        data = spec.default
    if data is None and spec.type in PATH_TYPES:
        if not spec.optional:
            raise LocalRunError(f"step {step}: required input {input_name} has no value")
    elif data is not None:
        data = check_literal(step, input_name, spec, data)
    return data


def check_literal(step: str, input_name: str, spec, value):
    """Apply the spec's type, enum and min/max the way Azure ML validates literals at submit time."""
    kind = spec.type
    try:
        if kind == "integer":
            value = int(value)
        elif kind == "number":
            value = float(value)
        elif kind == "boolean":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                value = value.lower() == "true"
            value = bool(value)
        else:
            value = str(value)
    except (TypeError, ValueError):
        raise LocalRunError(f"step {step}: input {input_name}={value!r} is not a valid {kind}") from None
    low, high = getattr(spec, "min", None), getattr(spec, "max", None)
    if low is not None and value < float(low) or high is not None and value > float(high):
        raise LocalRunError(f"step {step}: input {input_name}={value} is outside [{low}, {high}]")
    allowed = getattr(spec, "enum", None)
    if allowed and value not in allowed:
        raise LocalRunError(f"step {step}: input {input_name}={value!r} must be one of {', '.join(allowed)}")
    return value


def _within(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)
