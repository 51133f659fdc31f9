"""Follow a submitted Azure ML pipeline run until it ends: its step status as it goes, then a clear verdict.

    make follow                  # the run `make submit` submitted last (outputs/azure/submitted_job.json)
    make follow JOB=<run name>   # any run of the workspace

Exit 0 when the run completed, 1 when it failed, was canceled or did not end while followed. ``make submit``
streams through the same function; CI submits with ``--no-stream`` and follows in a later step, with a credential
that logs in again for every token (``pipelines/github_oidc.py``), so no login has to last the whole run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.settings import project_path

FAILED_STATES = {"Failed", "Canceled", "NotResponding"}
SUBMITTED_FILE = Path("azure") / "submitted_job.json"


def record_submission(output_root: Path, submitted, experiment: str) -> Path:
    """What ``make follow`` (and a CI step) reads to find the run that was just submitted."""
    path = output_root / SUBMITTED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"name": submitted.name, "studio_url": submitted.studio_url, "experiment": experiment}
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return path


def follow_job(ml_client, name: str) -> int:
    """Stream the run until it ends, then judge it by its final status (0 completed, 1 otherwise)."""
    from azure.ai.ml.exceptions import JobException

    try:
        ml_client.jobs.stream(name)  # prints step status; raises JobException when the run fails
    except JobException as err:
        # The SDK's message is a JSON dump of the service's error: shown once, below the status line.
        detail = str(err).strip()
    else:
        detail = ""
    final = ml_client.jobs.get(name)
    url = getattr(final, "studio_url", None) or ""
    if final.status == "Completed":
        print(f"Pipeline {name} completed. {url}".rstrip())
        return 0
    if final.status in FAILED_STATES:
        print(f"Pipeline {name} ended {final.status}. Logs and the failed step: {url}".rstrip(), file=sys.stderr)
        if detail:
            print(detail, file=sys.stderr)
    else:
        print(
            f"Pipeline {name} is still {final.status}: streaming stopped before it ended. "
            f"It goes on in Azure ML; make follow JOB={name} picks it up again.",
            file=sys.stderr,
        )
    return 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", help=f"run name (default: the one in OUTPUT_ROOT/{SUBMITTED_FILE})")
    parser.add_argument("--output-root", default="outputs", help="where make submit recorded the run")
    return parser.parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    from pipelines.azure_backend import EXIT_INVALID, connect

    name = args.job
    if not name:
        path = project_path(args.output_root) / SUBMITTED_FILE
        if not path.is_file():
            print(f"No run to follow: {path} does not exist; pass --job NAME (make follow JOB=...)", file=sys.stderr)
            return EXIT_INVALID
        name = json.loads(path.read_text(encoding="utf-8"))["name"]
    ml_client = connect(ml_client)
    if ml_client is None:
        return EXIT_INVALID
    return follow_job(ml_client, name)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
