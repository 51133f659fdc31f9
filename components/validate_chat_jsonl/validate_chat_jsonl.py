"""Validate chat-completion JSONL: keep the valid lines byte-for-byte, set aside the rest with the reason, report.

    python components/validate_chat_jsonl/validate_chat_jsonl.py --input_data data/sample \\
        --valid_data /tmp/v --rejected_data /tmp/r --data_report /tmp/rep \\
        [--base_model outputs/models/SmolLM2-135M-Instruct --max_seq_length 320]

The rules (ids, severities, messages) are in chatft/chat_format.py, the report in chatft/data_report.py. Every
non-blank line is one record, and every record ends up in exactly one place: valid_data (no errors; warnings
allowed) or rejected_data/rejected.jsonl, so records_in == records_valid + records_rejected. Blank lines are not
records; they are counted and skipped.

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
from array import array
from pathlib import Path

from chatft.chat_format import ChatValidator, LineCheck, Problem, reference_keys, too_long_problem
from chatft.component_cli import spec_arg_parser
from chatft.content_safety import ContentSafetyUnavailable
from chatft.data_report import (
    REJECTED_FILE,
    SHOWN_PROBLEMS,
    FileCounts,
    Tally,
    build_report,
    log_to_mlflow,
    print_summary,
    raise_if_failed,
    summarize,
    write_report,
)
from chatft.data_screen import DataScreen
from chatft.errors import UsageError, exit_on_error
from chatft.jsonl_io import (
    UTF8_BOM,
    RangeCopier,
    atomic_writer,
    is_blank,
    iter_lines,
    list_jsonl_files,
    strip_line_ending,
)

SPEC_PATH = Path(__file__).with_name("component.yml")
TOKEN_BATCH = 256  # conversations per tokenizer call: big enough for the Rust side, small enough to hold in memory


def build_parser() -> argparse.ArgumentParser:
    return spec_arg_parser(SPEC_PATH, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


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
            "per_conversation": summarize(lengths),
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


def main(args: argparse.Namespace) -> int:
    """Validate, write the outputs and the report, log to MLflow; 0 when the data passes, else an error (exit 1/2)."""
    if args.max_seq_length and not args.base_model:
        print("validate_chat_jsonl: warning: max_seq_length is not checked without base_model (no tokenizer)")
    counter = TokenCounter(args.base_model, args.max_seq_length) if args.base_model else None
    try:
        tally = validate(args, counter, DataScreen.from_environment(args.screen_harmful))
    except ContentSafetyUnavailable as err:  # the screen asked for is not reachable: a setting to fix, exit 2
        raise UsageError(str(err)) from None
    if counter is not None:
        tally.add_too_long(counter.records_too_long, counter.newly_warned, counter.too_long)
    report = build_report(tally, args, counter.report() if counter is not None else None)
    write_report(report, counter.lengths if counter is not None else None, args.data_report)
    log_to_mlflow(report, args.data_report)
    print_summary(report)
    raise_if_failed(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_on_error("validate_chat_jsonl", main, parse_args()))
