"""infra/check.sh and checkov on the Bicep templates: nothing found, every skip with a reason, syntax errors fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.bicep import INFRA, PARSE_SCRIPT, ROOT, run_tool


def _parsed(text: str) -> dict[str, Any]:
    report = json.loads(text)
    assert isinstance(report, dict), "one framework was asked for, so checkov returns one report"
    return report


def _checkov_report(iac_python: Path, folder: Path) -> dict[str, Any]:
    checkov = iac_python.parent / "checkov"
    result = run_tool(
        [checkov, "-d", folder, "--framework", "bicep", "--skip-download", "--compact", "-o", "json"], ROOT
    )
    return _parsed(result.stdout)


@pytest.fixture(scope="module")
def check_run(iac_python, tmp_path_factory):
    """infra/check.sh on the shipped templates, once for the module, keeping checkov's report (CHECKOV_REPORT)."""
    report = tmp_path_factory.mktemp("checkov") / "report.json"
    return run_tool(["bash", INFRA / "check.sh"], ROOT, env={"CHECKOV_REPORT": str(report)}), report


@pytest.mark.slow
def test_checkov_finds_nothing_and_every_skip_gives_a_reason(check_run):
    report = _parsed(check_run[1].read_text())
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"].get("failed_checks", [])]
    assert not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0 and summary["resource_count"] > 0
    skipped = report["results"].get("skipped_checks", [])
    assert len(skipped) == summary["skipped"] > 0, "the report lists every skip (checkov's --quiet would drop them)"
    for check in skipped:
        assert check["check_result"]["suppress_comment"] != "No comment provided", check["check_id"]


def _copy_with_syntax_error(tmp_path: Path) -> Path:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    main = copy / "main.bicep"
    # A typo a person could make: "=" instead of ":" inside the storage module's params.
    broken = main.read_text().replace(
        "    trainingDataContainerName: trainingDataContainerName", "    trainingDataContainerName = x", 1
    )
    assert broken != main.read_text()
    main.write_text(broken)
    return copy


def test_parse_step_fails_on_a_syntax_error(iac_python, tmp_path):
    copy = _copy_with_syntax_error(tmp_path)
    result = run_tool([iac_python, "-c", PARSE_SCRIPT, "main.bicep"], cwd=copy)
    assert result.returncode != 0
    assert "UnexpectedToken" in result.stderr or "UnexpectedCharacters" in result.stderr


@pytest.mark.slow
def test_checkov_alone_reports_a_syntax_error_only_as_a_parsing_error(iac_python, tmp_path):
    """Why check.sh parses first and also reads parsing_errors: checkov's exit status stays clean."""
    report = _checkov_report(iac_python, _copy_with_syntax_error(tmp_path))
    assert report["summary"]["parsing_errors"] >= 1
    assert not report["results"].get("failed_checks")


@pytest.mark.slow
def test_check_script_passes_on_the_templates(check_run):
    result = check_run[0]
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed 0" in result.stdout and "parsing errors 0" in result.stdout


def test_check_script_fails_on_a_syntax_error(iac_python, tmp_path):
    result = run_tool(["bash", INFRA / "check.sh", _copy_with_syntax_error(tmp_path)], cwd=ROOT)
    assert result.returncode != 0
    assert "main.bicep" in result.stderr
