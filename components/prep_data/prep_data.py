"""Split chat JSONL (local files or a Hugging Face dataset) into train and validation sets.

    python components/prep_data/prep_data.py --raw_data data/sample \\
        --train_data /tmp/train --validation_data /tmp/validation --split_info /tmp/split_info

How the split works: each record (a line without its line ending) gets the key sha256(seed, sha256(record)); the
records with the smallest keys go to validation, round(fraction * records) of them, and each split keeps the input
order. So the split depends only on the set of records, the seed and the fraction (not on file names, file order
or line endings), the counts are exact, and identical records always land in the same split (no leakage through
exact repeats). Lines are split unparsed: a malformed line is carried over unchanged for validate_chat_jsonl to
report. Blank lines are not records; they are skipped and counted.

Defaults, ranges and help texts live in component.yml (one home); the CLI reads them from there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chatft.chat_format import line_key
from chatft.component_cli import spec_arg_parser
from chatft.errors import UsageError
from chatft.jsonl_io import (
    NoJsonlFilesError,
    atomic_writer,
    is_blank,
    iter_lines,
    list_jsonl_files,
    strip_line_ending,
    write_jsonl_atomic,
)

SPEC_PATH = Path(__file__).with_name("component.yml")
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
SPLIT_INFO_FILE = "split_info.json"
COUNTS = ("records", "train_records", "validation_records", "blank_lines_skipped", "records_with_schema_errors")
SPLIT_METHOD = "sha256(seed, sha256(record)) ascending; the smallest round(fraction * records) go to validation"


class PrepError(UsageError):
    """Bad input or settings, reported as a one-line message and exit code 2 rather than a traceback."""


@dataclass
class SourceRecords:
    """The records to split, as raw lines without line endings, and what they came from."""

    records: list[bytes]
    description: dict
    blank_lines_skipped: int = 0
    files: list[dict] = field(default_factory=list)


def build_parser() -> argparse.ArgumentParser:
    return spec_arg_parser(SPEC_PATH, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def read_local_records(path: Path) -> SourceRecords:
    """Every non-blank line of the JSONL file(s), unparsed."""
    source = SourceRecords(records=[], description={"type": "local", "path": str(path)})
    for file in list_jsonl_files(path):
        count = 0
        for _, line in iter_lines(file.path):
            if is_blank(line):
                source.blank_lines_skipped += 1
                continue
            source.records.append(strip_line_ending(line))
            count += 1
        source.files.append({"name": file.name, "records": count})
    return source


def load_hf_records(name: str, split: str, revision: str | None) -> SourceRecords:
    """The dataset's ``messages`` column as JSONL records; other columns (ultrachat's prompt, prompt_id) are dropped:
    ultrachat's ``messages`` already opens with the prompt as the first user turn."""
    import datasets

    where = f"{name} [{split}]" + (f" at revision {revision}" if revision else "")
    try:
        dataset = datasets.load_dataset(name, split=split, revision=revision)
    except (ConnectionError, FileNotFoundError, ValueError) as exc:  # offline and not cached, no such dataset/split
        raise PrepError(f"{where}: cannot load it: {type(exc).__name__}: {exc}") from None
    if "messages" not in dataset.column_names:
        raise PrepError(
            f"{where}: no 'messages' column (columns: {', '.join(dataset.column_names)}); "
            "expected chat data like HuggingFaceH4/ultrachat_200k"
        )
    resolved = _resolved_commit(name, dataset)
    if revision and resolved and _is_commit(revision) and resolved != revision.lower():
        # Offline, datasets falls back to the newest cached copy whatever its revision: refuse to use another one.
        raise PrepError(
            f"{where}: the copy datasets loaded is revision {resolved}, not the pinned {revision} (offline, datasets "
            "uses whatever revision is cached); load the pinned revision with network access once, or change "
            "hf_revision"
        )
    records = []
    for messages in dataset.select_columns(["messages"]).to_dict()["messages"]:
        if isinstance(messages, list):
            # Arrow gives every message every key seen in the column, absent ones as null: drop those again.
            messages = [_without_nulls(message) for message in messages]
        records.append(json.dumps({"messages": messages}, ensure_ascii=False).encode("utf-8"))
    description = {
        "type": "huggingface",
        "dataset": name,
        "split": split,
        "revision": revision,
        "resolved_revision": resolved,
    }
    return SourceRecords(records=records, description=description)


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(char in "0123456789abcdefABCDEF" for char in revision)


def _resolved_commit(name: str, dataset) -> str | None:
    """The Hub commit the loaded data came from, or None (a local dataset folder, or nothing to tell).

    datasets caches a Hub dataset under <namespace>___<name>/<config>/<version>/<commit>/, online and offline alike.
    """
    if Path(name).exists() or not dataset.cache_files:
        return None
    commit = Path(dataset.cache_files[0]["filename"]).parent.name
    return commit.lower() if _is_commit(commit) else None


def _without_nulls(message: object) -> object:
    if isinstance(message, dict):
        return {key: value for key, value in message.items() if value is not None}
    return message


def count_schema_errors(records: list[bytes]) -> int:
    """Records that validate_chat_jsonl will reject on their own (duplicates and leakage aside): a heads-up only."""
    return sum(line_key(record) is None for record in records)


def fingerprint(digests: list[bytes]) -> str:
    """sha256 over the sorted record digests: the same set of records gives the same value in any order or layout."""
    combined = hashlib.sha256()
    for digest in sorted(digests):
        combined.update(digest)
    return combined.hexdigest()


def split_records(digests: list[bytes], validation_fraction: float, seed: int) -> list[bool]:
    """For each record (given by its sha256 digest), whether it goes to validation (method: module docstring)."""
    total = len(digests)
    if total < 2:
        raise PrepError(f"{total} record(s): need at least 2 to make a train and a validation split")
    seed_prefix = f"chatft-split:{seed}:".encode()
    keys = [hashlib.sha256(seed_prefix + digest).digest() for digest in digests]
    order = sorted(range(total), key=keys.__getitem__)
    # Round half up (Python's round() goes to even), and leave at least one record on each side.
    target = min(max(math.floor(total * validation_fraction + 0.5), 1), total - 1)
    cut = target
    # Identical records share a key and sit together in `order`: move the cut so they stay in one split.
    while 0 < cut < total and keys[order[cut - 1]] == keys[order[cut]]:
        cut -= 1
    if cut == 0:
        cut = target
        while cut < total and keys[order[cut - 1]] == keys[order[cut]]:
            cut += 1
    if cut == total:
        raise PrepError(f"all {total} records are identical: they cannot be split without leaking")
    is_validation = [False] * total
    for index in order[:cut]:
        is_validation[index] = True
    return is_validation


def main(args: argparse.Namespace) -> int:
    try:
        source = _read_source(args)
        digests = [hashlib.sha256(record).digest() for record in source.records]
        is_validation = split_records(digests, args.validation_fraction, args.seed)
    except (PrepError, NoJsonlFilesError) as exc:
        print(f"prep_data: error: {exc}", file=sys.stderr)
        return 2

    train = [record for record, in_validation in zip(source.records, is_validation, strict=True) if not in_validation]
    validation = [record for record, in_validation in zip(source.records, is_validation, strict=True) if in_validation]
    write_jsonl_atomic(args.train_data / TRAIN_FILE, train)
    write_jsonl_atomic(args.validation_data / VALIDATION_FILE, validation)

    train_digests = [digest for digest, in_validation in zip(digests, is_validation, strict=True) if not in_validation]
    validation_digests = [digest for digest, in_validation in zip(digests, is_validation, strict=True) if in_validation]
    split_info = {
        "records": len(source.records),
        "train_records": len(train),
        "validation_records": len(validation),
        "blank_lines_skipped": source.blank_lines_skipped,
        "records_with_schema_errors": count_schema_errors(source.records),
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "method": SPLIT_METHOD,
        "source": {**source.description, **({"files": source.files} if source.files else {})},
        "fingerprint": fingerprint(digests),
        "train_fingerprint": fingerprint(train_digests),
        "validation_fingerprint": fingerprint(validation_digests),
    }
    split_info_path = args.split_info / SPLIT_INFO_FILE
    with atomic_writer(split_info_path) as handle:
        handle.write((json.dumps(split_info, indent=2) + "\n").encode("utf-8"))
    _log_to_mlflow(split_info, split_info_path)
    print(
        f"prep_data: {split_info['records']} records -> {len(train)} train, {len(validation)} validation "
        f"(seed {args.seed}, fingerprint {split_info['fingerprint'][:12]}); {source.blank_lines_skipped} blank lines"
    )
    if split_info["records_with_schema_errors"]:
        print(
            f"prep_data: warning: {split_info['records_with_schema_errors']} records break the chat schema; "
            "they are kept in the splits, and validate_chat_jsonl reports them by file and line"
        )
    return 0


def _read_source(args: argparse.Namespace) -> SourceRecords:
    if bool(args.raw_data) == bool(args.hf_dataset):
        given = "both were given" if args.raw_data else "neither was given"
        raise PrepError(f"give exactly one of --raw_data (local JSONL) or --hf_dataset (Hugging Face); {given}")
    if args.raw_data:
        return read_local_records(args.raw_data)
    if not args.hf_revision:
        print(f"prep_data: warning: {args.hf_dataset} is not pinned; pass --hf_revision for reproducible data")
    return load_hf_records(args.hf_dataset, args.hf_split, args.hf_revision)


def _log_to_mlflow(split_info: dict, split_info_path: Path) -> None:
    import mlflow

    source = split_info["source"]
    with mlflow.start_run():
        mlflow.log_params(
            {
                "seed": split_info["seed"],
                "validation_fraction": split_info["validation_fraction"],
                "source_type": source["type"],
                "source": source.get("path") or _describe_hf(source),
                "data_fingerprint": split_info["fingerprint"],
            }
        )
        mlflow.log_metrics({key: value for key, value in split_info.items() if key in COUNTS})
        # A tag as well as a param: runs can be searched by it (tags.data_fingerprint = '...') to find what was
        # trained on the same data.
        mlflow.set_tag("data_fingerprint", split_info["fingerprint"])
        mlflow.log_artifact(str(split_info_path), artifact_path="split_info")


def _describe_hf(source: dict) -> str:
    revision = source["resolved_revision"] or source["revision"]
    return f"{source['dataset']}[{source['split']}]" + (f"@{revision}" if revision else "")


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
