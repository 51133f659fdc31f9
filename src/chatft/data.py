"""Training data as records: read them (local JSONL or a Hugging Face dataset), fingerprint them, split them.

A record is one non-blank JSONL line without its line ending, unparsed: a malformed line is carried along for
validate_chat_jsonl to report. prep_data writes what this module computes, and pipelines/azure/plan.py versions
the data asset by the same fingerprint, so a model's split_info names the data it was trained on.

How the split works: each record gets the key sha256(seed, sha256(record)); the records with the smallest keys go
to validation, round(fraction * records) of them, and each split keeps the input order. So the split depends only
on the set of records, the seed and the fraction (not on file names, file order or line endings), the counts are
exact, and identical records always land in the same split (no leakage through exact repeats).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from chatft.chat_format import line_key
from chatft.errors import UsageError
from chatft.jsonl_io import is_blank, iter_lines, list_jsonl_files, strip_line_ending

SPLIT_METHOD = "sha256(seed, sha256(record)) ascending; the smallest round(fraction * records) go to validation"


class DataError(UsageError):
    """Data that cannot be read or split as asked; the message says which and why (exit code 2)."""


@dataclass
class SourceRecords:
    """The records to split, as raw lines without line endings, and what they came from."""

    records: list[bytes]
    description: dict
    blank_lines_skipped: int = 0
    files: list[dict] = field(default_factory=list)


@dataclass
class Split:
    """Records and their sha256 digests on each side of a split, each side in input order."""

    train: list[bytes]
    validation: list[bytes]
    train_digests: list[bytes]
    validation_digests: list[bytes]


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
        raise DataError(f"{where}: cannot load it: {type(exc).__name__}: {exc}") from None
    if "messages" not in dataset.column_names:
        raise DataError(
            f"{where}: no 'messages' column (columns: {', '.join(dataset.column_names)}); "
            "expected chat data like HuggingFaceH4/ultrachat_200k"
        )
    resolved = _resolved_commit(name, dataset)
    if revision and resolved and _is_commit(revision) and resolved != revision.lower():
        # Offline, datasets falls back to the newest cached copy whatever its revision: refuse to use another one.
        raise DataError(
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


def record_digests(records: list[bytes]) -> list[bytes]:
    """The sha256 digest of each record: what the fingerprint and the split keys are computed from."""
    return [hashlib.sha256(record).digest() for record in records]


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
        raise DataError(f"{total} record(s): need at least 2 to make a train and a validation split")
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
        raise DataError(f"all {total} records are identical: they cannot be split without leaking")
    is_validation = [False] * total
    for index in order[:cut]:
        is_validation[index] = True
    return is_validation


def split(records: list[bytes], validation_fraction: float, seed: int) -> Split:
    """The records divided into train and validation (see split_records), with their digests."""
    digests = record_digests(records)
    is_validation = split_records(digests, validation_fraction, seed)
    result = Split([], [], [], [])
    for record, digest, in_validation in zip(records, digests, is_validation, strict=True):
        if in_validation:
            result.validation.append(record)
            result.validation_digests.append(digest)
        else:
            result.train.append(record)
            result.train_digests.append(digest)
    return result
