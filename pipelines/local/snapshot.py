"""A component's snapshot: its ``code`` folder plus its ``additional_includes``, copied as Azure ML uploads them,
into a content-addressed folder so an unchanged component is copied once. What a folder's ``.amlignore`` (else
``.gitignore``) leaves out of Azure ML's upload is left out here too, from the copy and from the hash: an
``mlflow.db`` left by running a script by hand in its folder neither ships nor misses the step cache."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from pipelines import sdk_private
from pipelines.local.hashing import FileHashMemo, hash_path
from pipelines.local.results import LocalRunError


def snapshot(component, output_root: Path, memo: FileHashMemo) -> tuple[Path, str]:
    """Copy code + additional_includes into ``output_root/snapshots``; return the folder and its hash."""
    sources = _sources(component)
    rules = {source: sdk_private.ignore_file(source) for source, _ in sources if source.is_dir()}  # read once
    digest = hashlib.sha256()
    for source, target in sources:
        excluded = rules[source].is_file_excluded if source in rules else None
        digest.update(f"{target}:{hash_path(source, memo, excluded)}".encode())
    code_hash = digest.hexdigest()
    folder = output_root / "snapshots" / f"{component.name}-{code_hash[:16]}"
    if not folder.is_dir():
        _copy(sources, folder, rules)
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


def _copy(sources: list[tuple[Path, str | None]], folder: Path, rules: dict) -> None:
    # Staged then renamed: an interrupted copy never passes for a snapshot.
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for source, target in sources:
        destination = staging / target if target else staging
        if source.is_dir():
            shutil.copytree(source, destination, ignore=_ignored(rules[source]), dirs_exist_ok=True)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    staging.rename(folder)


def _ignored(rules):
    """copytree's ignore callable: bytecode, and what the folder's ignore ``rules`` leave out of Azure ML's upload."""
    bytecode = shutil.ignore_patterns("__pycache__", "*.pyc")

    def names(directory: str, entries: list[str]) -> set[str]:
        return set(bytecode(directory, entries)) | {e for e in entries if rules.is_file_excluded(Path(directory, e))}

    return names
