"""Validate chat-completion JSONL: keep the valid lines byte-for-byte, set aside the rest with the reason, report.

    python components/validate_chat_jsonl/validate_chat_jsonl.py --input_data data/sample \\
        --valid_data /tmp/v --rejected_data /tmp/r --data_report /tmp/rep \\
        [--base_model outputs/models/SmolLM2-135M-Instruct --max_seq_length 320]

The rules (ids, severities, messages) are in chatft/chat_format.py. Every non-blank line is one record, and every
record ends up in exactly one place: valid_data (no errors; warnings allowed) or rejected_data/rejected.jsonl, so
records_in == records_valid + records_rejected. Blank lines are not records; they are counted and skipped.

Given base_model, the accepted conversations are tokenized the way training tokenizes them (the model's chat
template, with the assistant tokens marked as TRL marks them for assistant-only loss), in batches with the fast
(Rust) tokenizer: token totals, the tokens trained per epoch, and a ``too_long`` warning for each conversation
longer than max_seq_length, saying how much training would cut.

Exit codes: 0 passed; 1 a threshold failed (the outputs are written first, then the first problems are printed as
``file:line: message``); 2 unusable arguments (no such input, no .jsonl files, a model without a usable tokenizer).
Defaults, ranges and help texts live in component.yml (one home); the CLI reads them from there.
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

from chatft.chat_format import (
    RULES,
    ChatValidator,
    LineCheck,
    Problem,
    format_problem,
    reference_keys,
    too_long_problem,
)
from chatft.component_cli import spec_arg_parser
from chatft.content_safety import ContentSafetyUnavailable
from chatft.data_screen import DataScreen
from chatft.errors import UsageError
from chatft.jsonl_io import (
    UTF8_BOM,
    NoJsonlFilesError,
    RangeCopier,
    atomic_writer,
    is_blank,
    iter_lines,
    list_jsonl_files,
    strip_line_ending,
)

SPEC_PATH = Path(__file__).with_name("component.yml")
REJECTED_FILE = "rejected.jsonl"
REPORT_JSON = "data_report.json"
REPORT_MD = "data_report.md"
MESSAGES_PNG = "messages_per_conversation.png"
TOKENS_PNG = "token_lengths.png"
SHOWN_PROBLEMS = 20  # problems listed in the report and on the console; the full list is in rejected.jsonl
TOKEN_BATCH = 256  # conversations per tokenizer call: big enough for the Rust side, small enough to hold in memory


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

    def note(self, source: str, line_number: int, problems: tuple[Problem, ...]) -> None:
        """Count a record's problems (once per rule, however many of its messages break it) and show the first."""
        self.records_per_rule.update({problem.rule for problem in problems})
        for problem in problems:
            shown = self.shown_errors if problem.is_error else self.shown_warnings
            if len(shown) < SHOWN_PROBLEMS:
                shown.append(format_problem(source, line_number, problem))

    def total(self, attribute: str) -> int:
        return sum(getattr(counts, attribute) for counts in self.files)


class TokenCounter:
    """Tokenizes accepted conversations in batches, as training will, and keeps the counts the report needs."""

    def __init__(self, model_path: Path, max_seq_length: int | None):
        self.max_seq_length = max_seq_length
        self.tokenizer, self.counted_with, self.assistant_mask = _load_token_counting(model_path)
        self.lengths = array("q")  # tokens per accepted conversation, in input order
        self.assistant = self.trained = self.processed = 0
        self.records_too_long = self.tokens_cut = 0
        self.too_long: list[tuple[str, int, Problem, bool]] = []  # the first SHOWN_PROBLEMS, for the report
        self.newly_warned = 0  # too-long records that carry no other warning
        self._pending: list[tuple[str, int, bytes, bool]] = []

    def add(self, source: str, line_number: int, line: bytes, has_warning: bool) -> None:
        self._pending.append((source, line_number, line, has_warning))
        if len(self._pending) >= TOKEN_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        conversations = [json.loads(line)["messages"] for _, _, line, _ in pending]
        try:
            encoded = self._encode(conversations)
        except Exception:
            # One conversation the template refuses (some raise on a role they do not support) fails the batch:
            # find it, and say which line it is.
            for (source, line_number, _, _), conversation in zip(pending, conversations, strict=True):
                try:
                    self._encode([conversation])
                except Exception as exc:
                    raise UsageError(
                        f"{source}:{line_number}: the chat template of {self.counted_with} fails on this conversation "
                        f"({type(exc).__name__}: {exc}); training would fail the same way"
                    ) from None
            raise
        limit = self.max_seq_length
        for index, ids in enumerate(encoded["input_ids"]):
            length = len(ids)
            self.lengths.append(length)
            mask = encoded["assistant_masks"][index] if self.assistant_mask else None
            assistant = sum(mask) if mask is not None else length
            if limit is None or length <= limit:
                self.processed += length
                self.assistant += assistant
                self.trained += assistant
                continue
            # Training keeps the first max_seq_length tokens (TRL truncates "keep_start", packed or not).
            kept = sum(mask[:limit]) if mask is not None else limit
            self.processed += limit
            self.assistant += assistant
            self.trained += kept
            self.records_too_long += 1
            self.tokens_cut += length - limit
            source, line_number, _, has_warning = pending[index]
            self.newly_warned += not has_warning
            if len(self.too_long) < SHOWN_PROBLEMS:
                if mask is not None:
                    problem = too_long_problem(length, limit, assistant - kept, assistant)
                else:
                    problem = too_long_problem(length, limit, None, None)
                self.too_long.append((source, line_number, problem, has_warning))

    def _encode(self, conversations: list[list[dict]]):
        return self.tokenizer.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=self.assistant_mask
        )

    def report(self) -> dict:
        lengths = sorted(self.lengths)
        return {
            "counted_with": self.counted_with,
            "total": sum(lengths),
            # Without {% generation %} markers the assistant tokens cannot be told apart (and the loss sees all).
            "assistant": self.assistant if self.assistant_mask else None,
            "trained_per_epoch": self.trained,
            "processed_per_epoch": self.processed,
            "max_seq_length": self.max_seq_length,
            "assistant_only_loss": self.assistant_mask,
            "records_too_long": self.records_too_long,
            "tokens_cut": self.tokens_cut,
            "per_conversation": _summarize(lengths),
        }


def _load_token_counting(model_path: Path):
    """The model's fast tokenizer with the chat template training uses, its name, and whether it marks assistant
    tokens (then the counts are exact for assistant-only loss, the finetune default)."""
    from chatft.model_source import ModelNotFoundError, find_model_dir, load_tokenizer, training_chat_template

    try:
        model_dir = find_model_dir(model_path)
        tokenizer = load_tokenizer(model_dir)
    except (ModelNotFoundError, OSError, ValueError) as exc:
        raise UsageError(f"base_model: cannot load a tokenizer from {model_path}: {exc}") from None
    if not tokenizer.is_fast:
        raise UsageError(f"base_model: {model_dir} has no fast (Rust) tokenizer (tokenizer.json); it is needed here")
    if not tokenizer.chat_template:
        raise UsageError(f"base_model: the tokenizer in {model_dir} has no chat template; chat training needs one")
    name = _model_name(model_dir)
    try:
        tokenizer.chat_template = training_chat_template(tokenizer)
        assistant_mask = True
    except ValueError as exc:
        print(f"validate_chat_jsonl: warning: assistant tokens are not counted: {exc}")
        assistant_mask = False
    return tokenizer, name, assistant_mask


def _model_name(model_dir: Path) -> str:
    """The hub name the checkpoint was saved from when config.json has one, else the folder's name."""
    try:
        name = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError):
        name = None
    return name if isinstance(name, str) and name and not Path(name).is_absolute() else model_dir.name


def validate(args: argparse.Namespace, counter: TokenCounter | None = None, screen=None) -> Tally:
    """Check every input line, writing the valid and rejected outputs as it goes."""
    input_files = list_jsonl_files(args.input_data)
    reference = set()
    if args.reference_data:
        reference = reference_keys(
            line
            for file in list_jsonl_files(args.reference_data)
            for _, line in iter_lines(file.path)
            if not is_blank(line)
        )
    validator = ChatValidator(reference=reference)
    tally = Tally()
    with atomic_writer(args.rejected_data / REJECTED_FILE) as rejected_out:
        for file in input_files:
            with atomic_writer(args.valid_data / file.name) as valid_out:
                tally.files.append(
                    _validate_file(file.path, file.name, validator, tally, valid_out, rejected_out, counter, screen)
                )
    if counter is not None:
        counter.flush()
    return tally


def _validate_file(path, name, validator, tally, valid_out, rejected_out, counter, screen=None) -> FileCounts:
    """The hot loop (see bench/bench_validate.py): one pass, the common case first, accepted lines copied in runs."""
    counts = FileCounts(name)
    check_line = validator.check_line
    messages_per_conversation = tally.messages_per_conversation
    valid = rejected = blank = 0
    line = b""
    with open(path, "rb") as handle, RangeCopier(path, valid_out) as copier:
        # A BOM marks the file's encoding; it is not part of the first record (lines may be recombined).
        if handle.read(len(UTF8_BOM)) != UTF8_BOM:
            handle.seek(0)
        run_start = offset = handle.tell()  # the run of accepted lines starts at run_start; offset: end of `line`
        for line_number, line in enumerate(handle, start=1):
            offset += len(line)
            if line.isspace():
                blank += 1
                copier.copy(run_start, offset - len(line))
                run_start = offset
                continue
            verdict: LineCheck = check_line(line, name, line_number)
            if screen is not None and verdict.accepted:  # screen_harmful (chatft/data_screen.py)
                verdict = screen.check(line, verdict)
            if verdict.accepted:
                valid += 1
                messages_per_conversation[verdict.messages] += 1
                if verdict.problems:  # warnings only
                    tally.records_with_warnings += 1
                    tally.note(name, line_number, verdict.problems)
                if counter is not None:
                    counter.add(name, line_number, line, bool(verdict.problems))
            else:
                rejected += 1
                copier.copy(run_start, offset - len(line))
                run_start = offset
                tally.note(name, line_number, verdict.problems)
                rejected_out.write(_rejected_entry(name, line_number, line, verdict))
        copier.copy(run_start, offset)
        if offset > run_start and not line.endswith(b"\n"):
            valid_out.write(b"\n")  # an accepted last line without newline: every output line ends with one
    counts.records_valid, counts.records_rejected, counts.blank_lines_skipped = valid, rejected, blank
    counts.records_in = valid + rejected
    return counts


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


def _merge_token_warnings(tally: Tally, counter: TokenCounter) -> None:
    """too_long warnings are found in batches, after the other checks: add them to the counts and shown lists."""
    tally.records_per_rule["too_long"] += counter.records_too_long
    tally.records_with_warnings += counter.newly_warned
    for source, line_number, problem, _ in counter.too_long:
        if len(tally.shown_warnings) < SHOWN_PROBLEMS:
            tally.shown_warnings.append(format_problem(source, line_number, problem))


def build_report(tally: Tally, args: argparse.Namespace, counter: TokenCounter | None = None) -> dict:
    if counter is not None:
        _merge_token_warnings(tally, counter)
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
        "messages_per_conversation": _summarize(list(tally.messages_per_conversation.elements()), by_value=True),
        "tokens": counter.report() if counter is not None else _no_token_counts(args),
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


def _summarize(values: list[int], by_value: bool = False) -> dict | None:
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


def plot_histograms(report: dict, token_lengths: array | None, report_dir: Path) -> list[str]:
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


def main(args: argparse.Namespace) -> int:
    if args.max_seq_length and not args.base_model:
        print("validate_chat_jsonl: warning: max_seq_length is not checked without base_model (no tokenizer)")
    try:
        counter = TokenCounter(args.base_model, args.max_seq_length) if args.base_model else None
        tally = validate(args, counter, DataScreen.from_environment(args.screen_harmful))
    except (NoJsonlFilesError, UsageError, ContentSafetyUnavailable) as exc:
        print(f"validate_chat_jsonl: error: {exc}", file=sys.stderr)
        return 2
    report = build_report(tally, args, counter)
    images = plot_histograms(report, counter.lengths if counter is not None else None, args.data_report)
    with atomic_writer(args.data_report / REPORT_JSON) as handle:
        handle.write((json.dumps(report, indent=2) + "\n").encode("utf-8"))
    with atomic_writer(args.data_report / REPORT_MD) as handle:
        handle.write(render_markdown(report, images).encode("utf-8"))
    _log_to_mlflow(report, args.data_report)

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
    if report["passed"]:
        return 0
    for error in report["first_errors"]:
        print(error, file=sys.stderr)
    if report["records_rejected"] > len(report["first_errors"]):
        print(f"... all {report['records_rejected']} rejected records are in {REJECTED_FILE}", file=sys.stderr)
    for failure in report["failures"]:
        print(f"validate_chat_jsonl: failed: {failure}", file=sys.stderr)
    print(
        "Fix the lines above (rule ids are explained in chatft/chat_format.py and data_report.md), "
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


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
