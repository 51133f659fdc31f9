"""Load and stage component scripts the way the tests need them (components are folders, not packages)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import yaml


def load_script(name: str, path: Path):
    """Import a component script under ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def snapshot_component(folder: Path, dest: Path) -> Path:
    """Copy a component folder plus its additional_includes, as Azure ML and the local backend do."""
    spec = yaml.safe_load((folder / "component.yml").read_text(encoding="utf-8"))
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for include in spec.get("additional_includes", []):
        source = (folder / include).resolve()
        if source.is_dir():
            shutil.copytree(source, dest / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / source.name)
    return dest
