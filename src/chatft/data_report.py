"""The data report of validate_chat_jsonl: the running tally, data_report.json/.md, histograms, console and MLflow.

The validation itself (the rules, the hot loop, token counting) stays in the component; this module turns its
counts into what a person reads: the JSON and Markdown report, two PNG histograms, a console summary, and the
metrics and params logged to MLflow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chatft.chat_format import RULES, Problem, format_problem
from chatft.errors import ChatftError
from chatft.jsonl_io import atomic_writer

REJECTED_FILE = "rejected.jsonl"
REPORT_JSON = "data_report.json"
REPORT_MD = "data_report.md"
MESSAGES_PNG = "messages_per_conversation.png"
TOKENS_PNG = "token_lengths.png"
SHOWN_PROBLEMS = 20  # problems listed in the report and on the console; the full list is in rejected.jsonl


class ThresholdsFailed(ChatftError):
    """The data broke max_rejected_fraction or min_valid_records; the outputs and the report are written (exit 1)."""


@dataclass
class FileCounts:
    name: str
    records_in: int = 0
    records_valid: int = 0
    records_rejected: int = 0
    blank_lines_skipped: int = 0


@dataclass
class Tally:
    """Running counts over all input files; becomes the report."""

    files: list[FileCounts] = field(default_factory=list)
    records_with_warnings: int = 0  # accepted records that carry a warning
    records_per_rule: Counter = field(default_factory=Counter)
    messages_per_conversation: Counter = field(default_factory=Counter)
    shown_warnings: list[str] = field(default_factory=list)
    shown_errors: list[str] = field(default_factory=list)

    def note(self, source: str, line_number: int, problems: tuple[Problem, ...]) -> None:
        """Count a record's problems (once per rule, however many of its messages break it) and show the first."""
        self.records_per_rule.update({problem.rule for problem in problems})
        for problem in problems:
            shown = self.shown_errors if problem.is_error else self.shown_warnings
            if len(shown) < SHOWN_PROBLEMS:
                shown.append(format_problem(source, line_number, problem))

    def total(self, attribute: str) -> int:
        return sum(getattr(counts, attribute) for counts in self.files)

    def add_too_long(self, records: int, newly_warned: int, shown: list[tuple[str, int, Problem, bool]]) -> None:
        """too_long warnings are found in batches, after the other checks: add them to the counts and shown lists."""
        self.records_per_rule["too_long"] += records
        self.records_with_warnings += newly_warned
        for source, line_number, problem, _ in shown:
            if len(self.shown_warnings) < SHOWN_PROBLEMS:
                self.shown_warnings.append(format_problem(source, line_number, problem))


def build_report(tally: Tally, args: argparse.Namespace, tokens: dict | None = None) -> dict:
    """The report as data_report.json holds it; ``tokens`` is the token counter's section, if one ran."""
    records_in = tally.total("records_in")
    records_valid = tally.total("records_valid")
    records_rejected = tally.total("records_rejected")
    rejected_fraction = records_rejected / records_in if records_in else 0.0
    failures = []
    if rejected_fraction > args.max_rejected_fraction:
        failures.append(
            f"{records_rejected} of {records_in} records rejected ({rejected_fraction:.1%}), more than "
            f"max_rejected_fraction {args.max_rejected_fraction}"
        )
    if records_valid < args.min_valid_records:
        failures.append(f"{records_valid} valid records, fewer than min_valid_records {args.min_valid_records}")
    return {
        "input_data": str(args.input_data),
        "reference_data": str(args.reference_data) if args.reference_data else None,
        "records_in": records_in,
        "records_valid": records_valid,
        "records_rejected": records_rejected,
        "records_with_warnings": tally.records_with_warnings,
        "blank_lines_skipped": tally.total("blank_lines_skipped"),
        "rejected_fraction": rejected_fraction,
        "rules": {
            rule.id: {
                "severity": str(rule.severity),
                "records": tally.records_per_rule[rule.id],
                "description": rule.description,
            }
            for rule in RULES.values()
        },
        "messages_per_conversation": summarize(list(tally.messages_per_conversation.elements()), by_value=True),
        "tokens": tokens if tokens is not None else _no_token_counts(args),
        "files": [vars(counts) for counts in tally.files],
        "thresholds": {
            "max_rejected_fraction": args.max_rejected_fraction,
            "min_valid_records": args.min_valid_records,
        },
        "passed": not failures,
        "failures": failures,
        "first_errors": tally.shown_errors,
        "first_warnings": tally.shown_warnings,
    }


def _no_token_counts(args: argparse.Namespace) -> dict:
    """The tokens section without a tokenizer: the same keys, unknown values (readers test counted_with)."""
    keys = ("total", "assistant", "trained_per_epoch", "processed_per_epoch", "assistant_only_loss")
    return {
        "counted_with": None,
        **dict.fromkeys(keys),
        "max_seq_length": args.max_seq_length,
        "records_too_long": None,
        "tokens_cut": None,
        "per_conversation": None,
    }


def summarize(values: list[int], by_value: bool = False) -> dict | None:
    """Min/median/mean/p95/max of a list of counts; ``by_value`` adds how often each value occurs."""
    if not values:
        return None
    values = sorted(values)
    summary = {
        "min": values[0],
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2),
        "p95": values[min(len(values) - 1, int(0.95 * len(values)))],
        "max": values[-1],
    }
    if by_value:
        summary["conversations_by_length"] = {str(value): count for value, count in sorted(Counter(values).items())}
    return summary


def _plot_histograms(report: dict, token_lengths: array | None, report_dir: Path) -> list[str]:
    """PNG histograms of messages per conversation and (with a tokenizer) tokens per conversation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    summary = report["messages_per_conversation"]
    if summary:
        by_length = {int(length): count for length, count in summary["conversations_by_length"].items()}
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(list(by_length), list(by_length.values()), width=0.8)
        ax.set(xlabel="messages per conversation", ylabel="conversations", title="Messages per valid conversation")
        ax.set_xticks(list(by_length))
        _save(fig, report_dir / MESSAGES_PNG)
        written.append(MESSAGES_PNG)
    if token_lengths:
        tokens = report["tokens"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(token_lengths, bins=min(50, max(10, len(set(token_lengths)))))
        if tokens["max_seq_length"]:
            ax.axvline(tokens["max_seq_length"], color="tab:red", linestyle="--", label="max_seq_length")
            ax.legend()
        ax.set(
            xlabel=f"tokens with the chat template ({tokens['counted_with']})",
            ylabel="conversations",
            title="Tokens per valid conversation",
        )
        _save(fig, report_dir / TOKENS_PNG)
        written.append(TOKENS_PNG)
    return written


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


def render_markdown(report: dict, images: list[str]) -> str:
    status = "passed" if report["passed"] else "FAILED"
    lines = [
        f"# Data report: {report['input_data']} ({status})",
        "",
        "| records in | valid | rejected | with warnings | blank lines skipped |",
        "|---:|---:|---:|---:|---:|",
        f"| {report['records_in']} | {report['records_valid']} | {report['records_rejected']} "
        f"| {report['records_with_warnings']} | {report['blank_lines_skipped']} |",
        "",
    ]
    lines += [f"- **Failed:** {failure}" for failure in report["failures"]]
    lines += ["", "## Rules", "", "A record that breaks several rules counts once for each.", ""]
    lines += ["| rule | severity | records | what it means |", "|---|---|---:|---|"]
    lines += [
        f"| `{rule}` | {info['severity']} | {info['records']} | {info['description'].replace('|', '&#124;')} |"
        for rule, info in report["rules"].items()
    ]
    lines += _markdown_tokens(report["tokens"], TOKENS_PNG in images)
    summary = report["messages_per_conversation"]
    if summary:
        lines += [
            "",
            "## Messages per valid conversation",
            "",
            f"min {summary['min']}, median {summary['median']}, mean {summary['mean']}, max {summary['max']}",
            "",
        ]
        if MESSAGES_PNG in images:
            lines += [f"![messages per conversation]({MESSAGES_PNG})", ""]
        lines += ["| messages | conversations |", "|---:|---:|"]
        lines += [f"| {length} | {count} |" for length, count in summary["conversations_by_length"].items()]
    lines += ["", "## Files", "", "| file | records in | valid | rejected |", "|---|---:|---:|---:|"]
    lines += [
        f"| {f['name']} | {f['records_in']} | {f['records_valid']} | {f['records_rejected']} |" for f in report["files"]
    ]
    for title, key in (("First errors", "first_errors"), ("First warnings", "first_warnings")):
        if report[key]:
            lines += ["", f"## {title}", "", "```", *report[key], "```"]
    return "\n".join(lines) + "\n"


def _markdown_tokens(tokens: dict, with_image: bool) -> list[str]:
    lines = ["", "## Tokens", ""]
    if tokens["counted_with"] is None:
        return lines + ["Not counted: pass base_model (and max_seq_length) to count tokens with its chat template."]
    trained = "assistant tokens" if tokens["assistant_only_loss"] else "tokens"
    trained += " within max_seq_length" if tokens["max_seq_length"] else ""
    lines += [
        f"Counted with the tokenizer and chat template of `{tokens['counted_with']}`, "
        f"max_seq_length {tokens['max_seq_length'] or 'not given (nothing cut)'}.",
        "",
        "| | tokens |",
        "|---|---:|",
        f"| total (valid conversations) | {tokens['total']} |",
        f"| assistant | {tokens['assistant'] if tokens['assistant'] is not None else 'unknown'} |",
        f"| processed per epoch (after truncation) | {tokens['processed_per_epoch']} |",
        f"| **trained per epoch** ({trained}) | **{tokens['trained_per_epoch']}** |",
        f"| cut by truncation ({tokens['records_too_long']} conversations too long) | {tokens['tokens_cut']} |",
    ]
    summary = tokens["per_conversation"]
    if summary:
        lines += [
            "",
            f"Per conversation: min {summary['min']}, median {summary['median']}, mean {summary['mean']}, "
            f"p95 {summary['p95']}, max {summary['max']}.",
        ]
    if with_image:
        lines += ["", f"![tokens per conversation]({TOKENS_PNG})"]
    return lines


def write_report(report: dict, token_lengths: array | None, report_dir: Path) -> None:
    """data_report.json, data_report.md and the histograms it shows, each written atomically."""
    images = _plot_histograms(report, token_lengths, report_dir)
    with atomic_writer(report_dir / REPORT_JSON) as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
    with atomic_writer(report_dir / REPORT_MD) as handle:
        handle.write(render_markdown(report, images).encode("utf-8"))


def print_summary(report: dict) -> None:
    """The counts, the token totals and the first warnings on stdout."""
    print(
        f"validate_chat_jsonl: {report['records_in']} records in, {report['records_valid']} valid, "
        f"{report['records_rejected']} rejected, {report['records_with_warnings']} with warnings"
    )
    tokens = report["tokens"]
    if tokens["counted_with"] is not None:
        print(
            f"validate_chat_jsonl: {tokens['total']} tokens ({tokens['counted_with']}), "
            f"{tokens['trained_per_epoch']} trained per epoch, {tokens['records_too_long']} conversations too long"
        )
    for warning in report["first_warnings"]:
        print(f"warning: {warning}")


def raise_if_failed(report: dict) -> None:
    """The first errors on stderr, then ThresholdsFailed naming the thresholds broken; nothing when it passed."""
    if report["passed"]:
        return
    for error in report["first_errors"]:
        print(error, file=sys.stderr)
    if report["records_rejected"] > len(report["first_errors"]):
        print(f"... all {report['records_rejected']} rejected records are in {REJECTED_FILE}", file=sys.stderr)
    raise ThresholdsFailed(
        "failed: "
        + "; ".join(report["failures"])
        + "\nFix the lines above (rule ids are explained in chatft/chat_format.py and data_report.md), "
        "or change --max_rejected_fraction / --min_valid_records."
    )


def log_to_mlflow(report: dict, report_dir: Path) -> None:
    import mlflow

    metrics = {
        key: report[key]
        for key in ("records_in", "records_valid", "records_rejected", "records_with_warnings", "rejected_fraction")
    }
    metrics.update({f"rule_{rule}": info["records"] for rule, info in report["rules"].items()})
    tokens = report["tokens"]
    params = dict(report["thresholds"])
    if tokens["counted_with"] is not None:
        params.update(max_seq_length=tokens["max_seq_length"], tokens_counted_with=tokens["counted_with"])
        for key in ("total", "assistant", "trained_per_epoch", "processed_per_epoch", "cut"):
            value = tokens["tokens_cut" if key == "cut" else key]
            if value is not None:
                metrics[f"tokens_{key}"] = value
    with mlflow.start_run():
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(report_dir), artifact_path="data_report")
