"""The step cache, Azure ML's reuse rule: a deterministic step whose code, environment, command, input contents
and parameters are all unchanged reuses the outputs of the run that wrote its completion marker (step.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.local.hashing import FileHashMemo, hash_path
from pipelines.local.ranks import distributed_layout
from pipelines.local.results import StepResult

CACHE_FORMAT = 1  # bump to invalidate every cached step when the key recipe changes


def step_key(node, code_hash: str, input_hashes: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The cache key of a step and what it is the hash of (kept in step.json to explain a miss)."""
    component = node.component
    key_material = {
        "format": CACHE_FORMAT,
        "component": f"{component.name}:{component.version}",
        "code": code_hash,
        "environment": str(component.environment),
        "command": component.command,
        "inputs": input_hashes,
    }
    layout = distributed_layout(node)
    if layout != (1, 1):  # nodes x processes change the global batch, so the result
        key_material["processes"] = list(layout)
    return hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest(), key_material


class StepFolder:
    """``steps/<component>-<key>/``: one folder per output, step.log, and step.json, written last to mark a
    completed run. Outputs of an interrupted attempt stay, so a re-run continues from its checkpoints."""

    def __init__(self, output_root: Path, component, key: str):
        self.path = output_root / "steps" / f"{component.name}-{key[:16]}"
        self.outputs = {port: self.path / port for port in component.outputs}
        self.log = self.path / "step.log"
        self.marker = self.path / "step.json"

    def completed(self) -> bool:
        return self.marker.is_file()

    def prepare(self) -> None:
        for path in self.outputs.values():
            path.mkdir(parents=True, exist_ok=True)
        self.marker.unlink(missing_ok=True)

    def mark_completed(self, record: dict[str, Any], memo: FileHashMemo) -> None:
        record = {**record, "outputs": {port: hash_path(path, memo) for port, path in self.outputs.items()}}
        self.marker.write_text(json.dumps(record, indent=2), encoding="utf-8")


def output_hash(step: StepResult, port: str, memo: FileHashMemo) -> str:
    """An upstream output's content hash: from its step.json when the step completed, else hashed now."""
    marker = step.outputs[port].parent / "step.json"
    if step.status in ("completed", "reused") and marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8"))["outputs"][port]
    return hash_path(step.outputs[port], memo)
