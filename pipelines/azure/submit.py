"""make submit: plan → preflight → register what is missing → submit → follow the run to its end.

The run is followed by asking the workspace for its status (``jobs.get``, the ARM Jobs API) every POLL_SECONDS and
printing each change, not with ``jobs.stream``: that one raises a JobException with a traceback when a step fails,
and reads the run-history service besides ARM. A failed run ends with a message naming the run and its Studio URL
(where each step's logs are) and exit code 4; see ``pipelines/azure/cli.py`` for every exit code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipelines import preflight
from pipelines.azure.assets import ensure_assets
from pipelines.azure.cli import FollowInterrupted, PreflightRefused, RunFailed, SubmitOptions, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import SubmissionError, SubmissionPlan, prepare, print_plan, write_dry_run
from pipelines.settings import RunSettings

FAILED_STATES = {"Failed", "Canceled", "NotResponding"}
FINAL_STATES = FAILED_STATES | {"Completed"}
POLL_SECONDS = 30  # a pipeline run takes minutes to hours; a status read every 30 s is plenty
SUBMITTED_FILE = Path("azure") / "submitted_job.json"  # under the output root


def ready_workspace(plan: SubmissionPlan, options: SubmitOptions, ml_client, action: str, nothing_done: str):
    """What submit and schedule do before creating anything: connect, preflight against the workspace, register
    what is missing. The client to create with; errors say why not, in the words of ``action`` ("Cannot submit:
    ...") and ``nothing_done`` (what a failed preflight left undone)."""
    ml_client = connect(ml_client)
    report = preflight.run_preflight(plan.settings, plan.data, ml_client=ml_client, options=options, job=plan.job)
    print(report.text)
    if not report.ok:
        raise PreflightRefused(f"Preflight failed: {nothing_done}")
    try:
        ensure_assets(ml_client, plan)
    except SubmissionError as err:
        raise SubmissionError(f"Cannot {action}: {err}") from None
    return ml_client


def follow_run(ml_client, name: str, studio_url: str | None) -> None:
    """Print the run's status as it changes until it ends; RunFailed unless it completed."""
    last = None
    try:
        while True:
            reported = ml_client.jobs.get(name).status
            status = str(getattr(reported, "value", reported))  # the SDK's JobStatus enum prints as JobStatus.FAILED
            if status != last:
                print(f"  {time.strftime('%H:%M:%S')}  {name}: {status}", flush=True)
                last = status
            if status in FINAL_STATES:
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        raise FollowInterrupted(f"Stopped following {name}; the run goes on in Azure ML: {studio_url}") from None
    if status in FAILED_STATES:
        raise RunFailed(
            f"Pipeline run {name} ended {status}. The failed step and its logs are in Azure ML studio: {studio_url} "
            f"(or: az ml job download --name {name} --all)."
        )
    print(f"Pipeline run {name} completed.")


def record_submission(output_root: Path, submitted, experiment: str) -> Path:
    """What ``make follow`` (``pipelines/follow.py``, e.g. a later CI step) reads to find the run just submitted."""
    path = output_root / SUBMITTED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"name": submitted.name, "studio_url": submitted.studio_url, "experiment": experiment}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return path


def submit_run(settings: RunSettings, output_root: Path, options: SubmitOptions, ml_client=None, dry_run=False):
    """The submission (module docstring); errors carry their exit code (pipelines/azure/cli.py)."""
    plan = prepare(settings, options)
    print_plan(plan, dry_run)
    if dry_run:
        report = preflight.run_preflight(plan.settings, plan.data, ml_client=None, options=options, job=plan.job)
        print(report.text)
        path = write_dry_run(plan, output_root)
        print(f"Dry run: resolved pipeline written to {path}, the plan to {path.with_name('submission_plan.json')};")
        print("nothing was created or submitted.")
        return
    ml_client = ready_workspace(plan, options, ml_client, "submit", "nothing was created or submitted.")
    submitted = ml_client.jobs.create_or_update(plan.job, experiment_name=plan.settings.experiment_name)
    record_submission(output_root, submitted, plan.settings.experiment_name)  # for make follow / a later CI step
    print(f"Submitted {submitted.name}: {submitted.studio_url}", flush=True)
    if options.stream:
        follow_run(ml_client, submitted.name, submitted.studio_url)


def submit(settings: RunSettings, dry_run: bool, output_root: Path, ml_client=None, stream=True, options=None) -> int:
    """make submit (pipelines/run.py's azure backend): ``submit_run`` with its errors as the exit codes of cli.py."""
    options = options or SubmitOptions(stream=stream)
    return exit_code("submit", submit_run, settings, output_root, options, ml_client, dry_run)
