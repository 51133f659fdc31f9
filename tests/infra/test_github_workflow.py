"""The GitHub Actions workflow users get (.github/workflows/ci.yml). It cannot run here; its structure is checked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _triggers(workflow: dict) -> dict:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))


def _runs(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def test_lint_and_tests_run_on_pull_requests_and_pushes_to_main(workflow):
    triggers = _triggers(workflow)
    assert "pull_request" in triggers
    assert triggers["push"]["branches"] == ["main"]
    test = workflow["jobs"]["test"]
    assert "if" not in test
    assert {"make lint", "make test"} <= set(_runs(test)), "CI calls the same make targets as a developer"


def test_submit_runs_on_main_only_after_the_tests(workflow):
    submit = workflow["jobs"]["submit"]
    assert submit["needs"] == "test"
    assert submit["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert _runs(submit)[-1] == "make submit"
    assert submit["concurrency"]["cancel-in-progress"] is False, "a newer push must not cancel a running pipeline"


def test_azure_login_is_oidc_with_ids_from_repository_variables(workflow):
    assert workflow["permissions"] == {"contents": "read"}, "least privilege by default"
    assert "id-token" not in workflow["jobs"]["test"].get("permissions", {})
    submit = workflow["jobs"]["submit"]
    assert submit["permissions"] == {"contents": "read", "id-token": "write"}
    (login,) = [step for step in submit["steps"] if step.get("uses", "").startswith("azure/login@")]
    assert login["with"] == {
        "client-id": "${{ vars.AZURE_CLIENT_ID }}",
        "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
        "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
    }
    # What pipelines/azure_backend.workspace_client() reads when there is no .azureml/config.json.
    assert set(submit["env"]) == {"AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"}
    assert all(value.startswith("${{ vars.") for value in submit["env"].values())


def test_no_stored_secret_is_used_anywhere():
    text = WORKFLOW.read_text()
    assert "secrets." not in text
    assert not re.search(r"(client-secret|password|creds)\s*:", text, re.IGNORECASE)


def test_every_action_is_pinned_to_a_version(workflow):
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w-]+/[\w-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", action), action
