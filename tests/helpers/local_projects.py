"""Throwaway projects for the local backend's tests: command components written as files under a temporary root."""

from __future__ import annotations

import textwrap
from pathlib import Path

SCHEMA = "$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"


def component_yml(name: str, body: str, environment: str = "azureml:chatft-train:1") -> str:
    """A command component's spec: the header every test component shares, then ``body`` (inputs, outputs,
    command, and anything else it declares)."""
    header = f"{SCHEMA}\nname: {name}\nversion: 1\ntype: command\ncode: .\nenvironment: {environment}\n"
    return header + textwrap.dedent(body).lstrip("\n")


def write_project(root: Path, files: dict[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``root`` (text dedented); returns ``root``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root
