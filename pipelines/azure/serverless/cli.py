"""The command line of the serverless path: submit, preflight, teardown (``python -m pipelines.azure.serverless``)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from pipelines.azure.cli import PreflightRefused, exit_code
from pipelines.azure.client import workspace_client
from pipelines.azure.plan import SubmissionError
from pipelines.azure.serverless.deploy import registry_client_for, teardown
from pipelines.azure.serverless.plan import make_plan
from pipelines.azure.serverless.preflight import load_pricing, run_preflight
from pipelines.azure.serverless.settings import SERVERLESS_PRESET
from pipelines.azure.serverless.submit import submit_run
from pipelines.settings import RunSettings, SettingsError, load_settings, project_path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pipelines.azure import serverless

    formatter = argparse.RawDescriptionHelpFormatter
    prog = "python -m pipelines.azure.serverless"
    parser = argparse.ArgumentParser(prog=prog, description=serverless.__doc__, formatter_class=formatter)
    parser.add_argument("command", choices=["submit", "preflight", "teardown"])
    parser.add_argument("--config", default=SERVERLESS_PRESET, help=f"preset YAML (default: {SERVERLESS_PRESET})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STEP.INPUT=VALUE",
        help="override a data step input (prep_data.*, validate_chat_jsonl.*)",
    )
    parser.add_argument("--data", help="local chat JSONL file or folder instead of the preset's raw_data")
    parser.add_argument("--dry-run", action="store_true", help="submit: write the job YAML and plan; no network")
    parser.add_argument("--output-root", default="outputs", help="where the data steps and the dry run write")
    parser.add_argument("--pricing", help="JSON overriding infra/serverless_pricing.json")
    parser.add_argument(
        "--delete-subscription", action="store_true", help="teardown: also the marketplace subscription"
    )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """The exit codes of the package docstring."""
    return exit_code("serverless", _main, args)


def _main(args: argparse.Namespace) -> None:
    try:
        settings = load_settings(project_path(args.config), args.overrides)
    except SettingsError as err:
        raise SettingsError(f"Settings error: {err}") from None
    settings = replace(settings, raw_data=args.data) if args.data else settings
    output_root = project_path(args.output_root)
    pricing = Path(args.pricing) if args.pricing else None
    if args.command == "teardown":
        teardown(settings, args.delete_subscription)
    elif args.command == "submit":
        submit_run(settings, args.dry_run, output_root, pricing=pricing)
    else:
        check(settings, output_root, pricing, args.dry_run)


def check(settings: RunSettings, output_root: Path, pricing: Path | None, dry_run: bool) -> None:
    """``preflight``: the data steps, then region, subscription and cost (offline with ``dry_run``)."""
    try:
        plan = make_plan(settings, output_root)
        prices = load_pricing(pricing)
    except (SettingsError, SubmissionError) as err:
        raise SubmissionError(f"Cannot check: {err}") from None
    ml_client = registry_client = None
    if not dry_run:
        ml_client = workspace_client()
        registry_client = registry_client_for(settings, ml_client)
    report = run_preflight(settings, plan.serverless, plan.data, prices, ml_client, registry_client)
    print(report.text)
    if not report.ok:
        raise PreflightRefused("Preflight failed: the lines above say what to fix.")
