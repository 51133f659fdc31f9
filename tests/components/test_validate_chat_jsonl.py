"""validate_chat_jsonl run for real on tiny crafted files. Every run checks that the accounting closes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "validate_chat_jsonl"
SCRIPT = COMPONENT_DIR / "validate_chat_jsonl.py"


# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


def _load_module(name: str, path: Path):
    """Import a script that is not in a package (components are folders, not packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


validate_chat_jsonl = _load_module("component_validate_chat_jsonl", SCRIPT)

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


@pytest.fixture
def mlflow_run(mlflow_store, monkeypatch):
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
    exit_code = validate_chat_jsonl.main(args)
    report = json.loads((out / "report" / "data_report.json").read_text())
    assert (out / "report" / "data_report.md").read_text().startswith("# Data report")
    valid = {p.relative_to(out / "valid").as_posix(): p.read_bytes() for p in (out / "valid").rglob("*.jsonl")}
    rejected_text = (out / "rejected" / "rejected.jsonl").read_text(encoding="utf-8")
    rejected = [json.loads(entry) for entry in rejected_text.splitlines()]
    # The accounting closes: every record is either in valid_data or in rejected.jsonl, never both, never lost.
    valid_lines = sum(content.count(b"\n") for content in valid.values())
    assert report["records_in"] == report["records_valid"] + report["records_rejected"]
    assert report["records_valid"] == valid_lines
    assert report["records_rejected"] == len(rejected)
    assert report["records_in"] == sum(f["records_in"] for f in report["files"])
    return Result(exit_code, report, valid, rejected)


def write(path: Path, *lines: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


def test_mixed_file_keeps_good_lines_byte_for_byte_and_rejects_each_rule(tmp_path):
    good_lines = [good(i) for i in range(len(BAD_LINES))]
    good_lines[3] = good_lines[3].replace(b"\n", b"\r\n")  # CRLF kept as is
    good_lines[5] = (
        '{"messages":[{"role":"user","content":"Grüße"},{"role":"assistant","content":"Hallo!"}]}\n'.encode()
    )
    lines = [line for pair in zip(good_lines, BAD_LINES.values(), strict=True) for line in pair]  # good, bad, ...
    input_file = write(tmp_path / "in" / "train.jsonl", *lines)

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "1", "--min_valid_records", "0")

    assert result.exit_code == 0
    assert result.valid == {"train.jsonl": b"".join(good_lines)}
    assert result.report["records_in"] == len(lines)
    assert result.report["records_rejected"] == len(BAD_LINES)
    assert [entry["rule"] for entry in result.rejected] == list(BAD_LINES)
    for entry in result.rejected:
        line_number = entry["line"]
        assert entry["file"] == "train.jsonl"
        assert lines[line_number - 1].decode("utf-8", "backslashreplace").rstrip("\r\n") == entry["text"]
    rule_counts = {rule: info["records"] for rule, info in result.report["rules"].items()}
    assert rule_counts == {**dict.fromkeys(rule_counts, 0), **dict.fromkeys(BAD_LINES, 1)}
    bot_line = lines.index(BAD_LINES["unknown_role"]) + 1
    message = f'train.jsonl:{bot_line}: message 2 has role "bot"; expected system|user|assistant'
    assert message in result.report["first_errors"]


def test_bom_and_crlf_are_accepted(tmp_path):
    lines = [good(i).replace(b"\n", b"\r\n") for i in range(10)]
    input_file = write(tmp_path / "in" / "windows.jsonl", b"\xef\xbb\xbf", *lines)

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert result.report["records_valid"] == 10
    # Lines byte-for-byte, CRLF included; the BOM marked the old file's encoding and is not carried over.
    assert result.valid == {"windows.jsonl": b"".join(lines)}


def test_truncated_last_line_is_rejected_and_the_rest_kept(tmp_path):
    lines = [good(i) for i in range(10)]
    truncated = good(10)[:25]
    input_file = write(tmp_path / "in" / "cut.jsonl", *lines, truncated)

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.1")

    assert result.exit_code == 0
    assert result.valid["cut.jsonl"] == b"".join(lines)
    [entry] = result.rejected
    assert (entry["line"], entry["rule"]) == (11, "not_json")
    assert "truncated" in entry["message"]


def test_complete_last_line_without_newline_is_kept_with_one_added(tmp_path):
    lines = [good(i) for i in range(10)]
    input_file = write(tmp_path / "in" / "a.jsonl", *lines[:-1], lines[-1].rstrip(b"\n"))

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert result.valid["a.jsonl"] == b"".join(lines)


def test_zero_byte_file_next_to_a_good_one(tmp_path):
    write(tmp_path / "in" / "empty.jsonl")
    write(tmp_path / "in" / "full.jsonl", *(good(i) for i in range(10)))

    result = run_validator(tmp_path, tmp_path / "in")

    assert result.exit_code == 0
    assert result.valid == {"empty.jsonl": b"", "full.jsonl": b"".join(good(i) for i in range(10))}
    assert [(f["name"], f["records_in"]) for f in result.report["files"]] == [("empty.jsonl", 0), ("full.jsonl", 10)]


def test_only_a_zero_byte_file_fails_min_valid_records_without_crashing(tmp_path, capsys):
    input_file = write(tmp_path / "in" / "empty.jsonl")

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 1
    assert result.report["records_in"] == 0
    assert result.report["messages_per_conversation"] is None
    assert "0 valid records, fewer than min_valid_records 10" in capsys.readouterr().err


def test_blank_lines_are_counted_not_records(tmp_path):
    input_file = write(
        tmp_path / "in" / "gaps.jsonl", good(0), b"\n", b"   \r\n", *(good(i) for i in range(1, 10)), b"\n"
    )

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert (result.report["records_in"], result.report["blank_lines_skipped"]) == (10, 3)


def test_too_many_rejected_fails_after_writing_outputs(tmp_path, capsys):
    lines = [good(i) for i in range(19)]
    lines.insert(6, chat(USER, {"role": "bot", "content": "Hello"}))
    input_file = write(tmp_path / "in" / "train.jsonl", *lines)

    strict = run_validator(tmp_path, input_file)  # default max_rejected_fraction 0.01 < 1/20

    assert strict.exit_code == 1
    assert strict.report["passed"] is False
    assert strict.report["records_valid"] == 19  # the outputs are complete even though the step fails
    err = capsys.readouterr().err
    assert 'train.jsonl:7: message 2 has role "bot"; expected system|user|assistant' in err
    assert "1 of 20 records rejected (5.0%), more than max_rejected_fraction 0.01" in err

    lenient = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.05")
    assert lenient.exit_code == 0
    assert lenient.report["passed"] is True


def test_min_valid_records(tmp_path, capsys):
    input_file = write(tmp_path / "in" / "small.jsonl", *(good(i) for i in range(5)))

    assert run_validator(tmp_path, input_file, "--min_valid_records", "6").exit_code == 1
    assert "5 valid records, fewer than min_valid_records 6" in capsys.readouterr().err
    assert run_validator(tmp_path, input_file, "--min_valid_records", "5").exit_code == 0


def test_leakage_from_reference_and_duplicates(tmp_path):
    train = write(tmp_path / "train" / "train.jsonl", *(good(i) for i in range(20)))
    validation_lines = [good(i) for i in range(100, 110)] + [good(3), good(100), good(7)]
    validation = write(tmp_path / "validation" / "validation.jsonl", *validation_lines)

    result = run_validator(tmp_path, validation, "--reference_data", str(train), "--max_rejected_fraction", "0.2")

    assert result.exit_code == 0
    assert [(entry["line"], entry["rule"]) for entry in result.rejected] == [(11, "leakage"), (13, "leakage")]
    assert result.report["rules"]["duplicate"] == {"severity": "warning", "records": 1}
    assert result.report["records_with_warnings"] == 1
    assert result.report["first_warnings"] == [
        "validation.jsonl:12: exact duplicate of the conversation at validation.jsonl:1"
    ]
    assert result.valid["validation.jsonl"] == b"".join(validation_lines[:10] + [good(100)])


def test_folder_keeps_relative_names_and_skips_hidden_files(tmp_path):
    write(tmp_path / "in" / "b.jsonl", *(good(i) for i in range(6)))
    write(tmp_path / "in" / "sub" / "a.jsonl", *(good(i) for i in range(6, 12)))
    write(tmp_path / "in" / ".ipynb_checkpoints" / "b-checkpoint.jsonl", b"not json\n")
    write(tmp_path / "in" / "notes.txt", b"not json\n")

    result = run_validator(tmp_path, tmp_path / "in")

    assert result.exit_code == 0
    assert sorted(result.valid) == ["b.jsonl", "sub/a.jsonl"]
    assert [f["name"] for f in result.report["files"]] == ["b.jsonl", "sub/a.jsonl"]


@pytest.mark.parametrize(
    "make_input", [lambda tmp: tmp / "missing", lambda tmp: write(tmp / "in" / "data.json", good(0))]
)
def test_unusable_input_exits_2_with_a_message(tmp_path, capsys, make_input):
    args = validate_chat_jsonl.parse_args(
        ["--input_data", str(make_input(tmp_path))]
        + [f"--{name}={tmp_path / name}" for name in ("valid_data", "rejected_data", "data_report")]
    )
    assert validate_chat_jsonl.main(args) == 2
    assert re.search(
        r"validate_chat_jsonl: error: .*(no such file or folder|not a \.jsonl file)", capsys.readouterr().err
    )


def test_thresholds_out_of_range_are_refused(capsys):
    with pytest.raises(SystemExit) as excinfo:
        validate_chat_jsonl.parse_args(
            [
                "--input_data",
                "x",
                "--valid_data",
                "v",
                "--rejected_data",
                "r",
                "--data_report",
                "d",
                "--max_rejected_fraction",
                "1.5",
            ]
        )
    assert excinfo.value.code == 2
    assert "1.5 is outside [0.0, 1.0]" in capsys.readouterr().err


def test_counts_and_report_are_logged_to_mlflow(tmp_path, mlflow_run):
    client, run_id = mlflow_run
    input_file = write(tmp_path / "in" / "train.jsonl", *(good(i) for i in range(10)), BAD_LINES["unknown_role"])

    run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.5")

    run = client.get_run(run_id)
    assert run.data.metrics["records_in"] == 11
    assert run.data.metrics["records_rejected"] == 1
    assert run.data.metrics["rule_unknown_role"] == 1
    assert run.data.params["max_rejected_fraction"] == "0.5"
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "data_report")}
    assert logged == {"data_report/data_report.json", "data_report/data_report.md"}


def test_standalone_cli_on_the_sample_data(tmp_path):
    # No PYTHONPATH: the script must find chatft in the checkout by itself, as in the README command.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [
            sys.executable, str(SCRIPT.relative_to(REPO)),
            "--input_data", "data/sample",
            "--valid_data", str(tmp_path / "v"),
            "--rejected_data", str(tmp_path / "r"),
            "--data_report", str(tmp_path / "rep"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "300 records in, 300 valid, 0 rejected, 0 with warnings" in completed.stdout
    sample = REPO / "data" / "sample" / "support_chats.jsonl"
    assert (tmp_path / "v" / "support_chats.jsonl").read_bytes() == sample.read_bytes()


def test_sample_data_is_what_the_generator_writes():
    generator = _load_module("data_make_sample_data", REPO / "data" / "make_sample_data.py")
    args = generator.parse_args([])
    expected = "".join(
        json.dumps(c, ensure_ascii=False) + "\n" for c in generator.make_conversations(args.count, args.seed)
    )
    assert (REPO / "data" / "sample" / "support_chats.jsonl").read_text(encoding="utf-8") == expected


def test_spec_loads_offline_and_matches_the_script():
    from azure.ai.ml import load_component

    component = load_component(source=str(COMPONENT_DIR / "component.yml"))
    spec = yaml.safe_load((COMPONENT_DIR / "component.yml").read_text())
    assert (COMPONENT_DIR / "component.yml").read_text().startswith("$schema: https://azuremlschemas")
    assert spec["additional_includes"] == ["../../src/chatft"]
    assert spec["environment"] == "azureml:chatft-cpu:1"
    assert set(component.inputs) == set(spec["inputs"]) and set(component.outputs) == set(spec["outputs"])

    command = " ".join(spec["command"].split())
    parser_flags = {
        option for action in validate_chat_jsonl.build_parser()._actions for option in action.option_strings
    }
    for name, declared in spec["inputs"].items():
        flag = f"--{name} ${{{{inputs.{name}}}}}"
        assert (f"$[[{flag}]]" in command) == bool(declared.get("optional")), name
        assert flag in command and f"--{name}" in parser_flags, name
    for name in spec["outputs"]:
        assert f"--{name} ${{{{outputs.{name}}}}}" in command and f"--{name}" in parser_flags, name
    assert parser_flags - {"-h", "--help"} == {f"--{name}" for name in [*spec["inputs"], *spec["outputs"]]}
    defaults = validate_chat_jsonl.parse_args(
        ["--input_data", "i", "--valid_data", "v", "--rejected_data", "r", "--data_report", "d"]
    )
    assert defaults.max_rejected_fraction == spec["inputs"]["max_rejected_fraction"]["default"]
    assert defaults.min_valid_records == spec["inputs"]["min_valid_records"]["default"]
