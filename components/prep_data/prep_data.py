"""Split chat JSONL (local files or a Hugging Face dataset) into train and validation sets.

    python components/prep_data/prep_data.py --raw_data data/sample \\
        --train_data /tmp/train --validation_data /tmp/validation --split_info /tmp/split_info

Reading, fingerprinting and splitting are chatft/data.py (the split method is described there): the split depends
only on the set of records, the seed and the fraction. Lines are split unparsed: a malformed line is carried over
unchanged for validate_chat_jsonl to report. Blank lines are not records; they are skipped and counted.

Exit codes: 0 written; 2 unusable arguments or data (no such input, too few records, a dataset that will not load).

Defaults, ranges and help texts live in component.yml (one home); the CLI reads them from there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from chatft.component_cli import spec_arg_parser
from chatft.data import (
    SPLIT_METHOD,
    DataError,
    SourceRecords,
    Split,
    count_schema_errors,
    fingerprint,
    load_hf_records,
    read_local_records,
    split,
)
from chatft.errors import exit_on_error
from chatft.jsonl_io import atomic_writer, write_jsonl_atomic

SPEC_PATH = Path(__file__).with_name("component.yml")
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
SPLIT_INFO_FILE = "split_info.json"
COUNTS = ("records", "train_records", "validation_records", "blank_lines_skipped", "records_with_schema_errors")


def build_parser() -> argparse.ArgumentParser:
    return spec_arg_parser(SPEC_PATH, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> int:
    """Read, split, write the splits and split_info.json, log to MLflow; 0 when done, DataError when not."""
    source = _read_source(args)
    parts = split(source.records, args.validation_fraction, args.seed)
    write_jsonl_atomic(args.train_data / TRAIN_FILE, parts.train)
    write_jsonl_atomic(args.validation_data / VALIDATION_FILE, parts.validation)
    split_info = _split_info(source, parts, args)
    split_info_path = args.split_info / SPLIT_INFO_FILE
    with atomic_writer(split_info_path) as handle:
        handle.write((json.dumps(split_info, indent=2) + "\n").encode("utf-8"))
    _log_to_mlflow(split_info, split_info_path)
    print(
        f"prep_data: {split_info['records']} records -> {len(parts.train)} train, {len(parts.validation)} validation "
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
        raise DataError(f"give exactly one of --raw_data (local JSONL) or --hf_dataset (Hugging Face); {given}")
    if args.raw_data:
        return read_local_records(args.raw_data)
    if not args.hf_revision:
        print(f"prep_data: warning: {args.hf_dataset} is not pinned; pass --hf_revision for reproducible data")
    return load_hf_records(args.hf_dataset, args.hf_split, args.hf_revision)


def _split_info(source: SourceRecords, parts: Split, args: argparse.Namespace) -> dict:
    return {
        "records": len(source.records),
        "train_records": len(parts.train),
        "validation_records": len(parts.validation),
        "blank_lines_skipped": source.blank_lines_skipped,
        "records_with_schema_errors": count_schema_errors(source.records),
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "method": SPLIT_METHOD,
        "source": {**source.description, **({"files": source.files} if source.files else {})},
        "fingerprint": fingerprint(parts.train_digests + parts.validation_digests),
        "train_fingerprint": fingerprint(parts.train_digests),
        "validation_fingerprint": fingerprint(parts.validation_digests),
    }


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
    raise SystemExit(exit_on_error("prep_data", main, parse_args()))
