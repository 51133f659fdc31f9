"""Steps 3 to 5 of the serverless path against the workspace, in order: preflight, register the data, create the job
and poll it to its end, gate on what it reported, deploy and smoke-test (``pipelines.azure.serverless``)."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines.azure.cli import PreflightRefused, RunFailed, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import SubmissionError
from pipelines.azure.serverless.data import ensure_data_files
from pipelines.azure.serverless.deploy import deploy, fine_tuned_model_id, registry_client_for, smoke_test
from pipelines.azure.serverless.plan import Plan, make_plan, write_dry_run
from pipelines.azure.serverless.preflight import load_pricing, run_preflight
from pipelines.azure.serverless.report import champion_perplexity, eval_report, read_service_metrics, track
from pipelines.azure.serverless.settings import (
    FAILED_STATES,
    SMOKE_REQUEST,
    SUCCEEDED,
    DeployFailed,
    GateFailed,
    ServerlessError,
)
from pipelines.settings import RunSettings, SettingsError


def job_state(job) -> str:
    """The job's status as the service spells it ("Completed"); the SDK hands back a str-valued enum."""
    return str(getattr(job.status, "value", job.status))


def poll(ml_client, name: str, every: float, sleep=time.sleep):
    """Print each status change until the job ends; the final job. Errors from the service propagate."""
    last = None
    while True:
        job = ml_client.jobs.get(name)
        state = job_state(job)
        if state != last:
            print(f"  {time.strftime('%H:%M:%S')} {name}: {state}", flush=True)
            last = state
        if state == SUCCEEDED or state in FAILED_STATES:
            return job
        sleep(every)


def submit(settings: RunSettings, dry_run: bool, output_root: Path, pricing: Path | None = None, **kwargs) -> int:
    """make submit BACKEND=serverless: plan (the data steps run locally), then ``run_plan``; an exit code."""
    return exit_code("serverless", submit_run, settings, dry_run, output_root, pricing=pricing, **kwargs)


def submit_run(settings: RunSettings, dry_run: bool, output_root: Path, **kwargs) -> None:
    """Plan, then ``run_plan``; errors carry their exit code."""
    try:
        plan = make_plan(settings, output_root)
    except (SettingsError, SubmissionError) as err:
        raise SubmissionError(f"Cannot submit: {err}") from None
    run_plan(plan, dry_run, output_root, **kwargs)


def submit_plan(plan: Plan, dry_run: bool, output_root: Path, **kwargs) -> int:
    """``run_plan`` with its errors as the exit codes of the module docstring."""
    return exit_code("serverless", run_plan, plan, dry_run, output_root, **kwargs)


def run_plan(
    plan: Plan,
    dry_run: bool,
    output_root: Path,
    ml_client=None,
    registry_client=None,
    tracking_uri: str | None = None,
    pricing: Path | None = None,
    metrics_reader=None,
    sleep=time.sleep,
) -> None:
    """Preflight, register, submit, poll, track, gate, deploy, smoke-test (see the package docstring).

    ``metrics_reader(job_name) -> {"training_loss": [...], "validation_loss": [...]}`` defaults to the job's MLflow
    run in ``tracking_uri`` (the workspace's, unless given)."""
    try:
        prices = load_pricing(pricing)
    except SettingsError as err:
        raise SubmissionError(f"Cannot submit: {err}") from None
    files = ", ".join(f"{f.asset_name}:{f.version} ({f.records} records)" for f in plan.data.files)
    print(f"Serverless fine-tuning of {plan.settings.base_model} ({plan.job.task}), data {files}")
    if dry_run:
        print(run_preflight(plan.settings, plan.serverless, plan.data, prices).text)
        path = write_dry_run(plan, output_root)
        print(
            f"Dry run: job written to {path} (reloaded and validated by the SDK), the plan to "
            f"{path.with_name('plan.json')}; nothing was created or submitted."
        )
        return
    ml_client = connect(ml_client)
    preflight(plan, prices, ml_client, registry_client or registry_client_for(plan.settings, ml_client))
    final = train(ml_client, plan, sleep)
    tracking_uri = tracking_uri or ml_client.workspaces.get(ml_client.workspace_name).mlflow_tracking_uri
    if metrics_reader is None:

        def metrics_reader(job_name: str) -> dict[str, list[float]]:
            return read_service_metrics(tracking_uri, job_name, plan.serverless.metrics)

    gate(plan, final, metrics_reader(final.name), tracking_uri, output_root)
    deploy_and_smoke_test(ml_client, plan, final)


def preflight(plan: Plan, prices: dict, ml_client, registry_client) -> None:
    """Region, subscription and cost against the workspace; PreflightRefused before anything is created."""
    try:
        report = run_preflight(plan.settings, plan.serverless, plan.data, prices, ml_client, registry_client)
    except ServerlessError as err:
        raise PreflightRefused(f"Preflight failed: {err}; nothing was created or submitted.") from None
    print(report.text)
    if not report.ok:
        raise PreflightRefused("Preflight failed: nothing was created or submitted.")


def train(ml_client, plan: Plan, sleep):
    """Register the data (only what is missing), create the job, poll it to its end; the final job, or RunFailed."""
    print("Registering (only what is missing):")
    ensure_data_files(ml_client, plan.data)
    submitted = ml_client.jobs.create_or_update(plan.job, experiment_name=plan.settings.experiment_name)
    print(f"Submitted {submitted.name}: {submitted.studio_url}", flush=True)
    final = poll(ml_client, submitted.name, plan.serverless.poll_seconds, sleep=sleep)
    if job_state(final) != SUCCEEDED:
        raise RunFailed(f"Fine-tuning job {final.name} ended: {job_state(final)}; see {final.studio_url}")
    return final


def gate(plan: Plan, final, series: dict[str, list[float]], tracking_uri: str, output_root: Path) -> None:
    """The eval_report of the reported losses, tracked in MLflow either way; GateFailed when the gate failed."""
    result = eval_report(plan, final.name, series, champion_perplexity(tracking_uri, plan.settings.experiment_name))
    folder = output_root / "azure" / "serverless" / final.name
    run_id = track(plan, final, result, tracking_uri, folder / "eval_report")
    verdict = result["quality_gate"]
    print(f"Quality gate: {'passed' if verdict['passed'] else 'FAILED'}: {verdict['reason']}")
    print(f"  tracked as MLflow run {run_id}; report {folder / 'eval_report' / 'eval_report.json'}")
    if not verdict["passed"]:
        raise GateFailed("Not deployed: the quality gate failed.")


def deploy_and_smoke_test(ml_client, plan: Plan, final) -> None:
    try:
        endpoint = deploy(ml_client, plan, fine_tuned_model_id(ml_client, final))
        answer = smoke_test(ml_client, plan.serverless.endpoint_name)
    except ServerlessError as err:
        raise DeployFailed(f"Deployment failed: {err}") from None
    print(f"Endpoint {plan.serverless.endpoint_name}: {endpoint.scoring_uri}")
    print(f"Smoke test ({SMOKE_REQUEST['messages'][0]['content']!r}): {answer[:200]}")
    print("Talk to it: make chat TARGET=serverless; delete it: make teardown TARGET=serverless (it bills hourly).")
