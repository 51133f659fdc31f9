"""The flags shared by make submit / preflight / schedule / retrain, and the exit codes they all use.

Exit codes:
    0  done (or nothing to do)
    1  an unexpected error (a traceback names it)
    2  bad settings, data or assets, or no workspace configured: the message says what to fix, nothing was created
    3  preflight refused (quota): nothing was created
    4  the Azure ML run ended Failed, Canceled or NotResponding: the message names the run and its Studio URL
  130  interrupted while following a run; the run goes on in Azure ML
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatft.errors import ChatftError, UsageError, exit_on_error
from pipelines.settings import RunSettings, SettingsError, add_settings_arguments, settings_from_args

AZURE_PRESET = "pipelines/config/azure.yaml"
EXIT_INVALID, EXIT_PREFLIGHT, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 3, 4, 130


class PreflightRefused(ChatftError):
    """Preflight found a reason not to spend (quota, region): nothing was created."""

    exit_code = EXIT_PREFLIGHT


class RunFailed(ChatftError):
    """The Azure ML run ended Failed, Canceled or NotResponding; the message names it and its Studio URL."""

    exit_code = EXIT_RUN_FAILED


class FollowInterrupted(ChatftError):
    """Ctrl-C while following a run: the run goes on in Azure ML."""

    exit_code = EXIT_INTERRUPTED


def exit_code(prog: str, step: Callable[..., object], *args, **kwargs) -> int:
    """0 when ``step`` returns; else the exit code ``exit_on_error`` maps its error to (after printing it). For the
    callers that take a code back rather than exiting: ``make submit``'s backend table, the retraining function."""
    try:
        exit_on_error(prog, step, *args, **kwargs)
    except SystemExit as stop:
        return int(stop.code)
    return 0


@dataclass(frozen=True)
class SubmitOptions:
    """What ``make submit`` / ``make preflight`` / ``make retrain`` take besides the preset."""

    data: str | None = None  # local chat JSONL (file or folder) replacing the preset's training data
    tokens: int | None = None  # training tokens (all epochs), when the user knows better than the estimate
    data_report: Path | None = None  # a validate step's data_report.json with a "tokens" block
    pricing: Path | None = None  # overrides for infra/pricing.json
    stream: bool = True  # follow the run to its end after submitting

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SubmitOptions:
        return cls(
            data=args.data,
            tokens=args.tokens,
            data_report=Path(args.data_report) if args.data_report else None,
            pricing=Path(args.pricing) if args.pricing else None,
            stream=not getattr(args, "no_stream", False),
        )


def add_azure_arguments(parser: argparse.ArgumentParser, dry_run: bool = True) -> None:
    """The flags shared by submit, preflight, schedule and retrain (``dry_run=False``: the caller has --dry-run)."""
    if dry_run:
        parser.add_argument("--dry-run", action="store_true", help="azure: write what would be submitted; no network")
    parser.add_argument(
        "--data", help="azure: local chat JSONL file or folder to train on (replaces the preset's dataset)"
    )
    parser.add_argument(
        "--tokens", type=int, help="preflight: training tokens over all epochs, instead of the estimate"
    )
    parser.add_argument("--data-report", help="preflight: a validate step's data_report.json to count tokens from")
    parser.add_argument("--pricing", help="preflight: JSON overriding infra/pricing.json (prices, tokens/s)")
    parser.add_argument("--no-stream", action="store_true", help="azure: submit and return without following the run")


def azure_parser(description: str, output_root_help: str | None = None) -> argparse.ArgumentParser:
    """The command line of preflight, schedule and retrain: --config/--set (the Azure preset by default), the flags
    of ``add_azure_arguments`` and, when ``output_root_help`` says what goes there, --output-root."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(parser, default_config=AZURE_PRESET)
    add_azure_arguments(parser)
    if output_root_help:
        parser.add_argument("--output-root", default="outputs", help=output_root_help)
    return parser


def azure_settings(args: argparse.Namespace) -> RunSettings:
    """The preset of ``azure_parser``'s arguments with their overrides; a UsageError says what is wrong."""
    try:
        return settings_from_args(args)
    except SettingsError as err:
        raise UsageError(f"Settings error: {err}") from None
