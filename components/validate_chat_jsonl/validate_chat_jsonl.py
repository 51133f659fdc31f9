"""Validate chat-completion JSONL: keep the valid lines byte-for-byte, set aside the rest with the reason, report.

    python components/validate_chat_jsonl/validate_chat_jsonl.py --input_data data/sample \\
        --valid_data /tmp/v --rejected_data /tmp/r --data_report /tmp/rep

The rules (ids, severities, messages) are in chatft/chat_format.py. Every non-blank line is one record, and every
record ends up in exactly one place: valid_data (no errors; warnings allowed) or rejected_data/rejected.jsonl, so
records_in == records_valid + records_rejected. Blank lines are not records; they are counted and skipped.
The outputs are written even when a threshold fails, then the script exits 1 with the first problems as
``file:line: message``; unusable arguments (no such input, no .jsonl files) exit 2.

Defaults, ranges and help texts live in component.yml (one home); the CLI reads them from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

try:
    import chatft  # noqa: F401
except ModuleNotFoundError:
    # Run from a checkout: Azure ML and the local backend copy src/chatft next to this script (additional_includes);
    # a plain `python components/validate_chat_jsonl/validate_chat_jsonl.py` does not, so use the checkout's copy.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from chatft.chat_format import (
    RULES,
    ChatValidator,
    LineCheck,
    format_problem,
    parse_line,
    reference_keys,
)
from chatft.component_cli import spec_arg_parser
from chatft.jsonl_io import NoJsonlFilesError, atomic_writer, is_blank, iter_lines, list_jsonl_files, strip_line_ending

SPEC_PATH = Path(__file__).with_name("component.yml")
REJECTED_FILE = "rejected.jsonl"
REPORT_JSON = "data_report.json"
REPORT_MD = "data_report.md"
SHOWN_PROBLEMS = 20  # problems listed in the report and on the console; the full list is in rejected.jsonl


def build_parser() -> argparse.ArgumentParser:
    return spec_arg_parser(SPEC_PATH, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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

    def add(self, counts: FileCounts, line_number: int, verdict: LineCheck) -> None:
        counts.records_in += 1
        if verdict.accepted:
            counts.records_valid += 1
            self.messages_per_conversation[verdict.messages] += 1
            self.records_with_warnings += bool(verdict.problems)  # an accepted record's problems are all warnings
        else:
            counts.records_rejected += 1
        # A record counts once per rule it breaks, however many of its messages break it.
        self.records_per_rule.update({problem.rule for problem in verdict.problems})
        for problem in verdict.problems:
            shown = self.shown_errors if problem.is_error else self.shown_warnings
            if len(shown) < SHOWN_PROBLEMS:
                shown.append(format_problem(counts.name, line_number, problem))

    def total(self, attribute: str) -> int:
        return sum(getattr(counts, attribute) for counts in self.files)


def validate(args: argparse.Namespace) -> Tally:
    """Check every input line, writing the valid and rejected outputs as it goes."""
    input_files = list_jsonl_files(args.input_data)
    reference = set()
    if args.reference_data:
        reference = reference_keys(
            parse_line(line)[0]
            for file in list_jsonl_files(args.reference_data)
            for _, line in iter_lines(file.path)
            if not is_blank(line)
        )
    validator = ChatValidator(reference=reference)
    tally = Tally()
    with atomic_writer(args.rejected_data / REJECTED_FILE) as rejected_out:
        for file in input_files:
            counts = FileCounts(file.name)
            tally.files.append(counts)
            with atomic_writer(args.valid_data / file.name) as valid_out:
                for line_number, line in iter_lines(file.path):
                    if is_blank(line):
                        counts.blank_lines_skipped += 1
                        continue
                    verdict = validator.check_line(line, file.name, line_number)
                    tally.add(counts, line_number, verdict)
                    if verdict.accepted:
                        valid_out.write(line if line.endswith(b"\n") else line + b"\n")
                    else:
                        rejected_out.write(_rejected_entry(file.name, line_number, line, verdict))
    return tally


def _rejected_entry(source: str, line_number: int, line: bytes, verdict: LineCheck) -> bytes:
    first_error = next(problem for problem in verdict.problems if problem.is_error)
    entry = {
        "file": source,
        "line": line_number,
        "rule": first_error.rule,
        "message": first_error.message,
        "problems": [{"rule": problem.rule, "message": problem.message} for problem in verdict.problems],
        # backslashreplace: an invalid UTF-8 line is still shown, with its bad bytes as \xNN.
        "text": strip_line_ending(line).decode("utf-8", errors="backslashreplace"),
    }
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")


def build_report(tally: Tally, args: argparse.Namespace) -> dict:
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
            rule.id: {"severity": str(rule.severity), "records": tally.records_per_rule[rule.id]}
            for rule in RULES.values()
        },
        "messages_per_conversation": _summarize(tally.messages_per_conversation),
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


def _summarize(lengths: Counter) -> dict | None:
    """Min/median/mean/max messages per valid conversation, and how many conversations have each length."""
    if not lengths:
        return None
    values = list(lengths.elements())
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2),
        "max": max(values),
        "conversations_by_length": {str(length): lengths[length] for length in sorted(lengths)},
    }


def render_markdown(report: dict) -> str:
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
    lines += ["| rule | severity | records |", "|---|---|---:|"]
    lines += [f"| `{rule}` | {info['severity']} | {info['records']} |" for rule, info in report["rules"].items()]
    summary = report["messages_per_conversation"]
    if summary:
        lines += [
            "",
            "## Messages per valid conversation",
            "",
            f"min {summary['min']}, median {summary['median']}, mean {summary['mean']}, max {summary['max']}",
            "",
            "| messages | conversations |",
            "|---:|---:|",
        ]
        lines += [f"| {length} | {count} |" for length, count in summary["conversations_by_length"].items()]
    lines += ["", "## Files", "", "| file | records in | valid | rejected |", "|---|---:|---:|---:|"]
    lines += [
        f"| {f['name']} | {f['records_in']} | {f['records_valid']} | {f['records_rejected']} |" for f in report["files"]
    ]
    for title, key in (("First errors", "first_errors"), ("First warnings", "first_warnings")):
        if report[key]:
            lines += ["", f"## {title}", "", "```", *report[key], "```"]
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    try:
        tally = validate(args)
    except NoJsonlFilesError as exc:
        print(f"validate_chat_jsonl: error: {exc}", file=sys.stderr)
        return 2
    report = build_report(tally, args)
    with atomic_writer(args.data_report / REPORT_JSON) as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
    with atomic_writer(args.data_report / REPORT_MD) as handle:
        handle.write(render_markdown(report).encode("utf-8"))
    _log_to_mlflow(report, args.data_report)

    print(
        f"validate_chat_jsonl: {report['records_in']} records in, {report['records_valid']} valid, "
        f"{report['records_rejected']} rejected, {report['records_with_warnings']} with warnings"
    )
    for warning in report["first_warnings"]:
        print(f"warning: {warning}")
    if report["passed"]:
        return 0
    for error in report["first_errors"]:
        print(error, file=sys.stderr)
    if report["records_rejected"] > len(report["first_errors"]):
        print(f"... all {report['records_rejected']} rejected records are in {REJECTED_FILE}", file=sys.stderr)
    for failure in report["failures"]:
        print(f"validate_chat_jsonl: failed: {failure}", file=sys.stderr)
    print(
        "Fix the lines above (rule ids are explained in chatft/chat_format.py), "
        "or change --max_rejected_fraction / --min_valid_records.",
        file=sys.stderr,
    )
    return 1


def _log_to_mlflow(report: dict, report_dir: Path) -> None:
    import mlflow

    metrics = {
        key: report[key]
        for key in ("records_in", "records_valid", "records_rejected", "records_with_warnings", "rejected_fraction")
    }
    metrics.update({f"rule_{rule}": info["records"] for rule, info in report["rules"].items()})
    with mlflow.start_run():
        mlflow.log_params(report["thresholds"])
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(report_dir), artifact_path="data_report")


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
