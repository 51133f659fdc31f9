"""prep_data as the tests run it: the script, numbered records, and a run whose counts are checked."""

from __future__ import annotations

import json
from pathlib import Path

from chatft.errors import exit_on_error
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "prep_data"


# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
prep_data = load_script("component_prep_data", COMPONENT_DIR / "prep_data.py")


def record(i: int) -> bytes:
    messages = [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return json.dumps({"messages": messages}).encode()


def run_prep(out: Path, *flags: str) -> tuple[int, list[bytes], list[bytes], dict]:
    """Run the script; return exit code, train and validation lines (without endings) and split_info."""
    args = prep_data.parse_args(
        [
            *flags,
            "--train_data", str(out / "train"),
            "--validation_data", str(out / "validation"),
            "--split_info", str(out / "split_info"),
        ]
    )  # fmt: skip
    try:
        exit_code = exit_on_error("prep_data", prep_data.main, args)
    except SystemExit as exit:
        return exit.code, [], [], {}
    train = (out / "train" / "train.jsonl").read_bytes()
    validation = (out / "validation" / "validation.jsonl").read_bytes()
    info = json.loads((out / "split_info" / "split_info.json").read_text())
    assert train.endswith(b"\n") and validation.endswith(b"\n")
    train_lines, validation_lines = train.splitlines(), validation.splitlines()
    # Nothing lost or invented: the counts close.
    assert info["records"] == info["train_records"] + info["validation_records"]
    assert (info["train_records"], info["validation_records"]) == (len(train_lines), len(validation_lines))
    return exit_code, train_lines, validation_lines, info


def write_lines(path: Path, lines: list[bytes], ending: bytes = b"\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + ending for line in lines))
    return path
