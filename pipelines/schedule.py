"""Run the pipeline on a cron schedule in Azure ML (a JobSchedule), or remove that schedule.

    make schedule                # create or update the schedule named in pipelines/config/azure.yaml (azure.schedule)
    make schedule DRY_RUN=1      # write outputs/azure/schedule.yml; no network
    make unschedule              # disable and delete it

The schedule wraps the same pipeline job ``make submit`` sends, with the same registered data asset version,
environments and components, and with ``force_rerun`` off: a scheduled run whose data, code and settings did not
change reuses every deterministic step (only the deployment, which is not deterministic, runs again), so it costs
minutes of CPU, not a fine-tune. The data version is bound when the schedule is created: after ``make retrain``
registers new data, run ``make schedule`` again to move the schedule onto it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.azure.cli import SubmitOptions, azure_parser, azure_settings, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import prepare, print_plan, write_dry_run
from pipelines.azure.submit import ready_workspace
from pipelines.settings import RunSettings, SettingsError, project_path


def build_schedule(settings: RunSettings, job):
    """The JobSchedule for ``azure.schedule`` of the preset, around ``job``."""
    from azure.ai.ml.entities import CronTrigger, JobSchedule

    config = settings.azure.schedule
    if config is None:
        raise SettingsError(
            f"{settings.source}: no azure.schedule section; add one with name, cron and time_zone, e.g.\n"
            "azure:\n  schedule:\n    name: chatft-weekly\n    cron: '0 3 * * 1'\n    time_zone: UTC"
        )
    job.settings.force_rerun = False  # explicit: unchanged steps are reused, so an unchanged run is cheap
    return JobSchedule(
        name=config.name,
        trigger=CronTrigger(expression=config.cron, time_zone=config.time_zone),
        create_job=job,
        display_name=f"{settings.experiment_name} ({config.cron} {config.time_zone})",
        description=f"Runs the {settings.experiment_name} pipeline from {settings.source} on a cron schedule.",
        tags={"preset": Path(settings.source).name},
    )


def write_schedule(schedule, plan, output_root: Path) -> Path:
    """schedule.yml beside the pipeline YAML it runs, in the form ``az ml schedule create --file`` loads: the SDK's
    own dump inlines the job, which its loader does not accept, so create_job refers to the job file instead."""
    import io

    import yaml

    job_file = write_dry_run(plan, output_root)
    dumped = io.StringIO()
    schedule.dump(dumped)  # the SDK's own serialisation
    body = yaml.safe_load(dumped.getvalue())
    body["create_job"] = f"./{job_file.name}"
    target = job_file.with_name("schedule.yml")
    target.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return target


def create(settings: RunSettings, dry_run: bool, output_root: Path, ml_client=None, options=None) -> None:
    from pipelines import preflight

    options = options or SubmitOptions()
    plan = prepare(settings, options)
    schedule = build_schedule(plan.settings, plan.job)
    print_plan(plan, dry_run)
    if dry_run:
        print(preflight.run_preflight(plan.settings, plan.data, ml_client=None, options=options, job=plan.job).text)
        path = write_schedule(schedule, plan, output_root)
        print(f"Dry run: schedule written to {path}; nothing was created.")
        return
    ml_client = ready_workspace(plan, options, ml_client, "schedule", "the schedule was not created.")
    schedule = build_schedule(plan.settings, plan.job)  # around the job rebuilt from the registered components
    created = ml_client.schedules.begin_create_or_update(schedule).result()
    trigger = created.trigger
    print(f"Schedule {created.name}: {trigger.expression} ({trigger.time_zone}), enabled={created.is_enabled}")


def delete(settings: RunSettings, ml_client=None) -> None:
    """Disable, then delete: Azure ML refuses to delete an enabled schedule."""
    from azure.core.exceptions import ResourceNotFoundError

    if settings.azure.schedule is None:
        raise SettingsError(f"{settings.source}: no azure.schedule section to remove")
    name = settings.azure.schedule.name
    ml_client = connect(ml_client)
    try:
        ml_client.schedules.begin_disable(name=name).result()
        ml_client.schedules.begin_delete(name=name).result()
    except ResourceNotFoundError:
        print(f"Schedule {name} does not exist: nothing to remove.")
        return
    print(f"Schedule {name} disabled and deleted.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = azure_parser(__doc__, output_root_help="where the dry run writes schedule.yml")
    parser.add_argument("action", choices=["create", "delete"], nargs="?", default="create")
    return parser.parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    """make schedule / unschedule; the exit codes of pipelines/azure/cli.py."""
    return exit_code("schedule", _main, args, ml_client)


def _main(args: argparse.Namespace, ml_client) -> None:
    settings = azure_settings(args)
    if args.action == "delete":
        delete(settings, ml_client)
    else:
        create(settings, args.dry_run, project_path(args.output_root), ml_client, SubmitOptions.from_args(args))


if __name__ == "__main__":
    sys.exit(main(parse_args()))
