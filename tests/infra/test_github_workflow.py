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
    assert submit["concurrency"]["cancel-in-progress"] is False, "a newer push must not cancel a running pipeline"


def test_the_run_is_submitted_without_streaming_then_followed_in_a_later_step(workflow):
    """Azure/login#180: an OIDC login cannot be refreshed, so nothing may hold one across a run of hours."""
    runs = _runs(workflow["jobs"]["submit"])
    assert runs[-2:] == ["make submit ARGS=--no-stream", "make follow"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^follow: install ## .+\n\t\$\(PY\) -m pipelines\.follow ", makefile, re.MULTILINE)


def test_no_job_holds_one_login_across_submit_and_follow(workflow):
    for name, job in workflow["jobs"].items():
        uses = [step.get("uses", "") for step in job["steps"]]
        assert not [u for u in uses if u.startswith("azure/login@")], (
            f"job {name}: azure/login exchanges one GitHub ID token once; pipelines/github_oidc.py fetches one per "
            "Azure token instead"
        )
        for step in job["steps"]:
            run = step.get("run", "")
            assert not re.search(r"\bmake submit\b(?!.*--no-stream)", run), f"job {name}: submit streams: {run}"
            assert "az login" not in run and "az ml job stream" not in run, f"job {name}: {run}"


def test_azure_sign_in_is_oidc_with_ids_from_repository_variables(workflow):
    from pipelines import github_oidc

    assert workflow["permissions"] == {"contents": "read"}, "least privilege by default"
    assert "id-token" not in workflow["jobs"]["test"].get("permissions", {})
    submit = workflow["jobs"]["submit"]
    # id-token: write is what makes GitHub set the token request variables github_oidc reads.
    assert submit["permissions"] == {"contents": "read", "id-token": "write"}
    assert set(github_oidc.IDENTITY) <= set(submit["env"])
    # And what pipelines/azure/client.workspace_client() reads when there is no .azureml/config.json.
    assert {"AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME"} <= set(submit["env"])
    assert all(value == f"${{{{ vars.{name} }}}}" for name, value in submit["env"].items())


def test_no_stored_secret_is_used_anywhere():
    text = WORKFLOW.read_text()
    assert "secrets." not in text
    assert not re.search(r"(client-secret|password|creds)\s*:", text, re.IGNORECASE)


def test_every_action_is_pinned_to_a_version(workflow):
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w-]+/[\w-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", action), action
