"""validate_chat_jsonl as the tests run it: the script, tiny crafted lines, and a run whose accounting is checked."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chatft.errors import exit_on_error
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "validate_chat_jsonl"
SCRIPT = COMPONENT_DIR / "validate_chat_jsonl.py"


validate_chat_jsonl = load_script("component_validate_chat_jsonl", SCRIPT)

SYSTEM = {"role": "system", "content": "You are the Contoso Fiber support assistant."}


def good(i: int) -> bytes:
    messages = [SYSTEM, {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return (json.dumps({"messages": messages}) + "\n").encode()


def chat(*messages: dict) -> bytes:
    return (json.dumps({"messages": list(messages)}) + "\n").encode()


USER = {"role": "user", "content": "Is there an outage?"}
ASSISTANT = {"role": "assistant", "content": "Check Service status in the app."}

# One rejected line per error rule (leakage needs a reference set and is tested on its own).
BAD_LINES = {
    "invalid_utf8": b'{"messages": "\xff\xfe"}\n',
    "not_json": b'{"messages": [\n',
    "not_object": b"[]\n",
    "messages_missing": b'{"msgs": []}\n',
    "messages_not_list": b'{"messages": "hi"}\n',
    "messages_empty": b'{"messages": []}\n',
    "message_not_object": chat(USER, ASSISTANT, 42),
    "missing_role": chat({"content": "Hi"}, ASSISTANT),
    "missing_content": chat(USER, {"role": "assistant"}),
    "unknown_role": chat(USER, {"role": "bot", "content": "Hello"}),
    "unknown_key": chat(USER, {**ASSISTANT, "function_call": None}),
    "content_not_string": chat(USER, {"role": "assistant", "content": None}),
    "content_empty": chat(USER, {"role": "assistant", "content": "   "}),
    "no_assistant": chat(SYSTEM, USER),
    "last_not_assistant": chat(USER, ASSISTANT, USER),
    "system_not_first": chat(USER, SYSTEM, ASSISTANT),
    "not_alternating": chat(USER, USER, ASSISTANT),
    "weight_invalid": chat(USER, {**ASSISTANT, "weight": 0.5}),
}


def start_step_run(mlflow_store, monkeypatch):
    """As the local backend does: the step's run exists and MLFLOW_RUN_ID names it (mlflow consumes the variable)."""
    _, client, experiment_id = mlflow_store
    run_id = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


@dataclass
class Result:
    exit_code: int
    report: dict
    valid: dict[str, bytes]  # output file name -> content
    rejected: list[dict]


def run_main(args) -> int:
    """The exit code the command line gives: main's 0, or the code of the error it raised."""
    try:
        return exit_on_error("validate_chat_jsonl", validate_chat_jsonl.main, args)
    except SystemExit as exit:
        return exit.code


def run_validator(tmp_path: Path, input_data: Path, *flags: str) -> Result:
    out = tmp_path / "out"
    args = validate_chat_jsonl.parse_args(
        [
            "--input_data", str(input_data),
            "--valid_data", str(out / "valid"),
            "--rejected_data", str(out / "rejected"),
            "--data_report", str(out / "report"),
            *flags,
        ]
    )  # fmt: skip
    exit_code = run_main(args)
    report = json.loads((out / "report" / "data_report.json").read_text())
    markdown = (out / "report" / "data_report.md").read_text()
    assert markdown.startswith("# Data report")
    if report["records_valid"]:
        assert (out / "report" / "messages_per_conversation.png").read_bytes().startswith(b"\x89PNG")
        assert "](messages_per_conversation.png)" in markdown
    valid = {p.relative_to(out / "valid").as_posix(): p.read_bytes() for p in (out / "valid").rglob("*.jsonl")}
    rejected_text = (out / "rejected" / "rejected.jsonl").read_text(encoding="utf-8")
    rejected = [json.loads(entry) for entry in rejected_text.splitlines()]
    # The accounting closes: every record is either in valid_data or in rejected.jsonl, never both, never lost.
    valid_lines = sum(content.count(b"\n") for content in valid.values())
    assert report["records_in"] == report["records_valid"] + report["records_rejected"]
    assert report["records_valid"] == valid_lines
    assert report["records_rejected"] == len(rejected)
    assert report["records_in"] == sum(f["records_in"] for f in report["files"])
    for counts in report["files"]:
        assert counts["records_in"] == counts["records_valid"] + counts["records_rejected"]
    # ... and every input line is accounted for once: a valid line, a rejected line or a skipped blank line.
    inputs = [input_data] if input_data.is_file() else sorted(input_data.rglob("*.jsonl"))
    contents = [path.read_bytes() for path in inputs if ".ipynb" not in str(path)]
    input_lines = sum(data.count(b"\n") + (not data.endswith(b"\n") and bool(data)) for data in contents)
    assert input_lines == report["records_in"] + report["blank_lines_skipped"]
    return Result(exit_code, report, valid, rejected)


def write(path: Path, *lines: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path
