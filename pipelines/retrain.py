"""Retrain when the training data changed, and only then.

    make retrain DATA=data/            # fingerprint data/, submit only if that version is not registered yet
    make retrain DATA=data/ FORCE=1    # submit even when the data is unchanged
    make retrain DATA=data/ DRY_RUN=1  # the fingerprint and the decision; no network

The decision is one lookup: the data asset version is the data's fingerprint (prep_data's, over the set of
records), so "this version exists" means "a run already trained on exactly these records". When it does not
exist, the submission registers it and runs the pipeline (``pipelines.azure.submit.submit``). The cloud trigger
in ``infra/retrain_function/`` calls ``retrain()`` on the blobs it downloads, so a laptop and the Event Grid
path decide the same way. There, Event Grid only enqueues; one worker at a time waits for an upload to finish and
decides once, so every later event of the same upload, and every redelivery, lands on "already registered". Two
submissions that still race to register the same version are both fine when the registered version carries
this data's fingerprint (``ensure_data_asset``).

Locally there is nothing to call: ``make run`` already retrains on new data. The local backend keys every step on
the content of its inputs, so a new file in ``data/`` reruns prep_data and everything downstream of it, and an
unchanged ``data/`` reuses every deterministic step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from chatft.errors import UsageError
from pipelines.azure.assets import get_or_none
from pipelines.azure.cli import SubmitOptions, azure_parser, azure_settings, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import SubmissionError, local_data_path, plan_data_asset, with_local_data
from pipelines.azure.submit import submit_run
from pipelines.settings import RunSettings, project_path


def retrain_run(
    settings: RunSettings, output_root: Path, options: SubmitOptions, ml_client=None, force=False, dry_run=False
):
    """The decision (module docstring), then ``submit_run``; errors carry their exit code (pipelines/azure/cli.py)."""
    if options.data:
        settings = with_local_data(settings, options.data)
    if local_data_path(settings) is None:
        raise UsageError(
            "Cannot retrain: retraining is decided on local data (a fingerprint of its records); pass "
            f"--data PATH (make retrain DATA=path). {settings.source} reads "
            f"{settings.raw_data or settings.step('prep_data').get('hf_dataset') or 'no data'}; "
            "to rerun on that, use make submit."
        )
    try:
        plan = plan_data_asset(settings)
    except SubmissionError as err:
        raise SubmissionError(f"Cannot retrain: {err}") from None
    print(f"Data fingerprint {plan.fingerprint[:12]}… ({plan.records} records) → {plan.name}:{plan.version}")
    if dry_run:
        print("Dry run: the workspace was not asked whether this version exists; make submit DRY_RUN=1 shows the rest.")
        return
    ml_client = connect(ml_client)
    if get_or_none(ml_client.data, plan.name, plan.version) is not None and not force:
        print(f"Data unchanged ({plan.name}:{plan.version} is already registered): nothing to do.")
        return
    reason = "forced" if force else "new data"
    print(f"Retraining ({reason}): registering {plan.name}:{plan.version} if missing and submitting the pipeline.")
    submit_run(settings, output_root, options, ml_client)


def retrain(settings: RunSettings, output_root: Path, options: SubmitOptions, ml_client=None, **flags) -> int:
    """``retrain_run`` with its errors as exit codes: what the cloud trigger (infra/retrain_function) takes back."""
    return exit_code("retrain", retrain_run, settings, output_root, options, ml_client, **flags)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = azure_parser(__doc__, output_root_help="where a submission writes local files")
    parser.add_argument("--force", action="store_true", help="submit even when the data is unchanged")
    return parser.parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    """make retrain; the exit codes of pipelines/azure/cli.py."""
    return exit_code("retrain", _main, args, ml_client)


def _main(args: argparse.Namespace, ml_client) -> None:
    settings = azure_settings(args)
    output_root = project_path(args.output_root)
    options = SubmitOptions.from_args(args)
    retrain_run(settings, output_root, options, ml_client, force=args.force, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
