"""Checkpoints in the checkpoints folder: the last complete one is where a re-run (a pre-empted node) resumes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written by the Trainer after the weights, optimizer and RNG state: a checkpoint without it was cut short.
COMPLETE_MARKER = "trainer_state.json"


def is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``: its last file, trainer_state.json, is there and whole.

    The Trainer writes that file in place, not by rename, so a kill during the write leaves it empty or cut off;
    resuming from it would fail on the JSON (seen when a SIGKILL landed mid-write on a loaded machine)."""
    try:
        state = json.loads((checkpoint / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_complete_checkpoint(folder: str | Path, remove_incomplete: bool = True) -> Path | None:
    """The newest checkpoint-<step> in ``folder`` that was written to the end, or None.

    A checkpoint cut short (the node was pre-empted while saving) is removed (by one process only, when several
    share the folder): the Trainer would count it when rotating old checkpoints, and rewrites it anyway when
    training gets back to that step.
    """
    found = sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("checkpoint-*")
        if (m := CHECKPOINT.match(p.name)) and p.is_dir()
    )
    complete = []
    for _, path in found:
        if is_complete(path):
            complete.append(path)
        elif remove_incomplete:
            print(
                f"finetune: removing {path}: its {COMPLETE_MARKER} is missing or cut off, the save was cut short",
                flush=True,
            )
            shutil.rmtree(path)
    return complete[-1] if complete else None


def resume_point(folder: str | Path, main_process: bool) -> tuple[Path | None, int]:
    """(checkpoint to resume from, its step), or (None, 0) for a fresh start; only the main process prunes."""
    resume_from = last_complete_checkpoint(folder, main_process) if Path(folder).is_dir() else None
    return resume_from, int(CHECKPOINT.match(resume_from.name).group(1)) if resume_from else 0
