"""Before spending: is there quota for the clusters and the endpoint, and what will the run cost?

    make preflight                 # quota (needs the workspace) + cost estimate
    make preflight DRY_RUN=1       # cost estimate only, no network
    python -m pipelines.preflight --data data/sample --tokens 3000000 --pricing my_prices.json

Quota: each VM size in infra/compute.json is looked up with the SDK's size listing (vCPUs, VM family) and its
family's usage (``ml_client.compute.list_usage()``); the need is vCPUs x max nodes per cluster, plus the endpoint's
instances with Azure ML's 20% upgrade reserve for both blue/green slots of a rollout, summed per family and against
the regional total.

Cost: training tokens / tokens per second x the training cluster's hourly price, plus per-step node overhead, plus the
endpoint's hourly price while it is deployed. Training tokens (every position through the model, all epochs) come,
in order, from ``--tokens``, from a data report's ``tokens`` block (``--data-report``), from the local data
(characters / 4: an approximation, said so in the table), or, for a Hugging Face dataset, from its split size in
``infra/pricing.json``. Prices and tokens/s there are assumptions with their source and date, never measurements.
"""

from __future__ import annotations

import argparse

from pipelines.azure.cli import PreflightRefused, SubmitOptions, azure_parser, azure_settings, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import with_local_data
from pipelines.preflight.report import run_preflight


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = azure_parser(__doc__)
    parser.prog = "python -m pipelines.preflight"  # not __main__.py
    return parser.parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    """make preflight; the exit codes of pipelines/azure/cli.py (3: a quota shortfall)."""
    return exit_code("preflight", _main, args, ml_client)


def _main(args: argparse.Namespace, ml_client) -> None:
    settings = azure_settings(args)
    options = SubmitOptions.from_args(args)
    if options.data:
        settings = with_local_data(settings, options.data)
    ml_client = None if args.dry_run else connect(ml_client)
    report = run_preflight(settings, None, ml_client=ml_client, options=options)
    print(report.text)
    if not report.ok:
        raise PreflightRefused("Preflight failed: the ERROR lines above say what to fix.")
