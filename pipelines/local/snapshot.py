"""A component's snapshot: its ``code`` folder plus its ``additional_includes``, copied as Azure ML uploads them,
into a content-addressed folder so an unchanged component is copied once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pipelines.local.hashing import FileHashMemo, hash_path
from pipelines.local.results import LocalRunError


def snapshot(component, output_root: Path, memo: FileHashMemo) -> tuple[Path, str]:
    """Copy code + additional_includes into ``output_root/snapshots``; return the folder and its hash."""
    sources = _sources(component)
    digest = hashlib.sha256()
    for source, target in sources:
        digest.update(f"{target}:{hash_path(source, memo)}".encode())
    code_hash = digest.hexdigest()
    folder = output_root / "snapshots" / f"{component.name}-{code_hash[:16]}"
    if not folder.is_dir():
        _copy(sources, folder)
    return folder, code_hash


def _sources(component) -> list[tuple[Path, str | None]]:
    """(source, name in the snapshot): the code folder at the top, each include under its own name."""
    base = Path(component.base_path)
    sources: list[tuple[Path, str | None]] = [((base / (component.code or ".")).resolve(), None)]
    for include in component.additional_includes or []:
        include_path = (base / include).resolve()
        if not include_path.exists():
            raise LocalRunError(f"component {component.name}: additional include {include} not found")
        sources.append((include_path, include_path.name))
    return sources


def _copy(sources: list[tuple[Path, str | None]], folder: Path) -> None:
    # Staged then renamed: an interrupted copy never passes for a snapshot.
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in sources:
        destination = staging / target if target else staging
        if source.is_dir():
            shutil.copytree(source, destination, ignore=ignore, dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    staging.rename(folder)
