"""What a local run reports: one StepResult per step, a PipelineResult, and the error a failed run raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chatft.errors import ChatftError


class LocalRunError(ChatftError, RuntimeError):
    """A step failed or a pipeline cannot run locally; the message names the step and the log."""


@dataclass
class StepResult:
    name: str
    status: str  # "completed" | "reused" | "failed" | "skipped"
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)
    log: Path | None = None
    run_id: str | None = None
    cache_key: str = ""


@dataclass
class PipelineResult:
    run_id: str
    steps: list[StepResult]
    outputs: dict[str, Path]
    seconds: float

    @property
    def succeeded(self) -> bool:
        return all(s.status in ("completed", "reused") for s in self.steps)
