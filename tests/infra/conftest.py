"""The Bicep fixtures, parsed once per session for every infra test module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bicep import INFRA, PARSE_SCRIPT, bicep_files, iac_python_path, run_tool


@pytest.fixture(scope="session")
def iac_python() -> Path:
    return iac_python_path()


@pytest.fixture(scope="session")
def parsed(iac_python) -> dict[str, dict[str, Any]]:
    """Every .bicep file under infra/, parsed by pycep: {"main.bicep": {...}, "modules/x.bicep": {...}}."""
    result = run_tool([iac_python, "-c", PARSE_SCRIPT, *bicep_files(INFRA)], cwd=INFRA)
    assert result.returncode == 0, f"pycep failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)
