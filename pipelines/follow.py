"""Follow a submitted Azure ML pipeline run until it ends: its status as it changes, then a clear verdict.

    make follow                  # the run `make submit` submitted last (outputs/azure/submitted_job.json)
    make follow JOB=<run name>   # any run of the workspace

The same loop ``make submit`` follows with (``pipelines.azure.submit.follow_run``), and its exit codes: 0 completed,
4 failed, canceled or not responding, 130 interrupted (``pipelines/azure/cli.py``). CI submits with ``--no-stream``
and follows in a later step, with a credential that signs in again for every token (``pipelines/github_oidc.py``),
so no login has to last the whole run.
"""

from __future__ import annotations

import argparse
import json
import sys

from chatft.errors import UsageError
from pipelines.azure.cli import exit_code
from pipelines.azure.client import connect
from pipelines.azure.submit import SUBMITTED_FILE, follow_run
from pipelines.settings import project_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", help=f"run name (default: the one in OUTPUT_ROOT/{SUBMITTED_FILE})")
    parser.add_argument("--output-root", default="outputs", help="where make submit recorded the run")
    return parser.parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    """make follow; the exit codes of pipelines/azure/cli.py."""
    return exit_code("follow", _main, args, ml_client)


def _main(args: argparse.Namespace, ml_client) -> None:
    name, studio_url = args.job, None
    if not name:
        path = project_path(args.output_root) / SUBMITTED_FILE
        if not path.is_file():
            raise UsageError(f"No run to follow: {path} does not exist; pass --job NAME (make follow JOB=...)")
        recorded = json.loads(path.read_text(encoding="utf-8"))
        name, studio_url = recorded["name"], recorded.get("studio_url")
    ml_client = connect(ml_client)
    if studio_url is None:  # a run named on the command line: its Studio page, for the failure message
        studio_url = ml_client.jobs.get(name).studio_url
    follow_run(ml_client, name, studio_url)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
