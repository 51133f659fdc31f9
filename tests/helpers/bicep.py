"""Reading the Bicep templates in tests: pycep (in its own venv, .venv-iac, made by infra/check.sh) parses them in a
subprocess, and small accessors read its tree (references as dotted text, resources by type, module calls)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
STORAGE_QUEUE_DATA_MESSAGE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
COGNITIVE_SERVICES_USER = "a97b65f3-24c7-4388-baec-2e87135dc908"
ML_API_VERSION = "2025-09-01"

PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps({name: BicepParser().parse(file_path=Path(name)) for name in sys.argv[1:]}, default=str))
"""


def iac_python_path() -> Path:
    venv = Path(os.environ.get("CHATFT_IAC_VENV", ROOT / ".venv-iac"))
    python = venv / "bin" / "python"
    if python.exists():
        return python
    message = f"{venv} does not exist: run infra/check.sh once to create it (pycep and checkov live there)"
    if os.environ.get("CHATFT_REQUIRE_IAC") == "1":
        pytest.fail(message)
    pytest.skip(message)


def bicep_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.bicep"))


def run_tool(args: list[str | Path], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``args`` run in ``cwd``, output captured; ``env``: variables added to this process's environment."""
    environ = {**os.environ, **env} if env else None
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, env=environ)


def ref(value: Any) -> Any:
    """pycep's property accessors as dotted text (``identity.outputs.id``); anything else unchanged."""
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        operands = value["operator"]["operands"]
        return f"{ref(operands['operand_1'])}.{ref(operands['operand_2'])}"
    return value


def resources_of(tree: dict[str, Any], type_: str, existing: bool = False) -> dict[str, dict[str, Any]]:
    return {
        name: r for name, r in tree.get("resources", {}).items() if r["type"] == type_ and r["existing"] == existing
    }


def body_of(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's body, looking through an ``if (...)`` condition."""
    config = resource["config"]
    return config["config"] if "condition" in config else config


def module_of(parsed: dict[str, Any], symbol: str) -> dict[str, Any]:
    return parsed["main.bicep"]["modules"][symbol]


def wired(parsed: dict[str, Any], symbol: str) -> dict[str, Any]:
    """The parameters main.bicep passes to module ``symbol``, references as dotted text."""
    return {name: ref(value) for name, value in module_of(parsed, symbol)["config"]["params"].items()}
