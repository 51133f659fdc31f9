"""prep_data run for real: local JSONL and an offline Hugging Face dataset folder, split seeded and lossless."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import yaml

from tests.helpers.components import load_script
from tests.helpers.prep_runs import COMPONENT_DIR, REPO, prep_data, record, run_prep, write_lines

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


def test_split_is_80_20_and_keeps_every_record(tmp_path):
    records = [record(i) for i in range(100)]
    write_lines(tmp_path / "raw" / "chats.jsonl", records)

    exit_code, train, validation, info = run_prep(tmp_path / "out", "--raw_data", str(tmp_path / "raw"))

    assert exit_code == 0
    assert (len(train), len(validation)) == (80, 20)
    assert sorted(train + validation) == sorted(records)
    # Each split keeps the input order (easier to diff and review).
    assert train == [r for r in records if r in set(train)]
    assert info["seed"] == 42 and info["validation_fraction"] == 0.2
    assert info["source"] == {
        "type": "local",
        "path": str(tmp_path / "raw"),
        "files": [{"name": "chats.jsonl", "records": 100}],
    }
    assert len(info["fingerprint"]) == 64
    assert info["records_with_schema_errors"] == 0


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    write_lines(tmp_path / "raw" / "chats.jsonl", [record(i) for i in range(100)])
    raw = ["--raw_data", str(tmp_path / "raw")]

    _, train_a, validation_a, info_a = run_prep(tmp_path / "a", *raw, "--seed", "13")
    _, train_b, validation_b, info_b = run_prep(tmp_path / "b", *raw, "--seed", "13")
    _, train_c, validation_c, info_c = run_prep(tmp_path / "c", *raw, "--seed", "14")

    assert (train_a, validation_a) == (train_b, validation_b)
    assert info_a["validation_fingerprint"] == info_b["validation_fingerprint"]
    assert len(validation_c) == 20 and set(validation_c) != set(validation_a)
    assert info_c["fingerprint"] == info_a["fingerprint"]  # same data, other split
    assert info_c["validation_fingerprint"] != info_a["validation_fingerprint"]


def test_split_depends_on_the_records_not_their_order_files_or_line_endings(tmp_path):
    records = [record(i) for i in range(50)]
    write_lines(tmp_path / "one" / "all.jsonl", records)
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    write_lines(tmp_path / "two" / "part1.jsonl", shuffled[:20], ending=b"\r\n")
    write_lines(tmp_path / "two" / "nested" / "part2.jsonl", shuffled[20:])

    _, train_one, validation_one, info_one = run_prep(tmp_path / "out1", "--raw_data", str(tmp_path / "one"))
    _, train_two, validation_two, info_two = run_prep(tmp_path / "out2", "--raw_data", str(tmp_path / "two"))

    assert set(validation_one) == set(validation_two) and set(train_one) == set(train_two)
    assert info_one["fingerprint"] == info_two["fingerprint"]
    assert info_two["source"]["files"] == [
        {"name": "nested/part2.jsonl", "records": 30},
        {"name": "part1.jsonl", "records": 20},
    ]


def test_fingerprint_changes_when_a_record_changes(tmp_path):
    records = [record(i) for i in range(20)]
    write_lines(tmp_path / "a" / "chats.jsonl", records)
    write_lines(tmp_path / "b" / "chats.jsonl", records[:-1] + [records[-1].replace(b"Answer", b"Reply")])

    _, _, _, info_a = run_prep(tmp_path / "out_a", "--raw_data", str(tmp_path / "a" / "chats.jsonl"))
    _, _, _, info_b = run_prep(tmp_path / "out_b", "--raw_data", str(tmp_path / "b" / "chats.jsonl"))

    assert info_a["fingerprint"] != info_b["fingerprint"]


def test_malformed_lines_are_carried_unchanged_and_blank_lines_counted(tmp_path):
    good = [record(i) for i in range(10)]
    odd = [b"this is not json", b'{"messages": "\xff"}', b'{"messages": [{"role": "bot"}]}', b"[1, 2]"]
    raw = tmp_path / "raw" / "messy.jsonl"
    raw.parent.mkdir()
    # A BOM, CRLF endings, blank lines and a truncated last line without newline.
    raw.write_bytes(
        b"\xef\xbb\xbf"
        + b"\r\n".join(good[:5] + odd)
        + b"\r\n\r\n   \n"
        + b"\n".join(good[5:])
        + b'\n{"messages": [{"role": "us'
    )

    exit_code, train, validation, info = run_prep(tmp_path / "out", "--raw_data", str(raw))

    assert exit_code == 0
    expected = good + odd + [b'{"messages": [{"role": "us']
    assert sorted(train + validation) == sorted(expected)  # byte-for-byte, only line endings and the BOM dropped
    assert (info["records"], info["blank_lines_skipped"]) == (15, 2)
    assert info["records_with_schema_errors"] == len(odd) + 1  # the heads-up; validate_chat_jsonl does the rejecting


def test_identical_lines_stay_in_one_split(tmp_path):
    repeated = record(999)
    lines = [record(i) for i in range(40)] + [repeated] * 10
    write_lines(tmp_path / "raw" / "chats.jsonl", lines)

    for seed in range(5):
        _, train, validation, _ = run_prep(
            tmp_path / f"out{seed}", "--raw_data", str(tmp_path / "raw"), "--seed", str(seed)
        )
        assert Counter(train)[repeated] in (0, 10)
        assert Counter(validation)[repeated] in (0, 10)
        assert validation and train


def test_prep_then_validate_finds_no_leakage_on_the_sample_data(tmp_path):
    validate = load_script(
        "component_validate_chat_jsonl", REPO / "components" / "validate_chat_jsonl" / "validate_chat_jsonl.py"
    )
    exit_code, train, validation, _ = run_prep(tmp_path / "prep", "--raw_data", str(REPO / "data" / "sample"))
    assert exit_code == 0 and (len(train), len(validation)) == (240, 60)

    args = validate.parse_args(
        [
            "--input_data", str(tmp_path / "prep" / "validation"),
            "--reference_data", str(tmp_path / "prep" / "train"),
            "--valid_data", str(tmp_path / "valid"),
            "--rejected_data", str(tmp_path / "rejected"),
            "--data_report", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert validate.main(args) == 0
    report = json.loads((tmp_path / "report" / "data_report.json").read_text())
    assert (report["records_valid"], report["rules"]["leakage"]["records"]) == (60, 0)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], "neither was given"),
        (["--raw_data", "data/sample", "--hf_dataset", "HuggingFaceH4/ultrachat_200k"], "both were given"),
    ],
)
def test_exactly_one_source(tmp_path, capsys, flags, expected):
    assert run_prep(tmp_path / "out", *flags)[0] == 2
    err = capsys.readouterr().err
    assert "give exactly one of --raw_data (local JSONL) or --hf_dataset (Hugging Face)" in err
    assert expected in err


def test_too_few_records_to_split(tmp_path, capsys):
    write_lines(tmp_path / "raw" / "one.jsonl", [record(0)])
    assert run_prep(tmp_path / "out", "--raw_data", str(tmp_path / "raw"))[0] == 2
    assert "1 record(s): need at least 2" in capsys.readouterr().err


def test_folder_without_jsonl_files(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    assert run_prep(tmp_path / "out", "--raw_data", str(tmp_path / "raw"))[0] == 2
    assert "no .jsonl files in this folder" in capsys.readouterr().err


def test_counts_and_fingerprint_are_logged_to_mlflow(tmp_path, mlflow_store, monkeypatch):
    _, client, experiment_id = mlflow_store
    run_id = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # as the local backend does
    write_lines(tmp_path / "raw" / "chats.jsonl", [record(i) for i in range(30)])

    _, _, _, info = run_prep(tmp_path / "out", "--raw_data", str(tmp_path / "raw"))

    run = client.get_run(run_id)
    assert run.data.metrics["train_records"] == 24 and run.data.metrics["validation_records"] == 6
    assert run.data.params["data_fingerprint"] == info["fingerprint"]
    assert run.data.tags["data_fingerprint"] == info["fingerprint"]
    assert run.data.params["seed"] == "42"
    assert [artifact.path for artifact in client.list_artifacts(run_id, "split_info")] == ["split_info/split_info.json"]


def test_out_of_range_fraction_is_refused(capsys):
    with pytest.raises(SystemExit):
        prep_data.parse_args(
            ["--validation_fraction", "0.9", "--train_data", "t", "--validation_data", "v", "--split_info", "s"]
        )
    assert "0.9 is outside [0.01, 0.5]" in capsys.readouterr().err


def test_spec_loads_offline_and_matches_the_script():
    from azure.ai.ml import load_component

    spec_path = COMPONENT_DIR / "component.yml"
    component = load_component(source=str(spec_path))
    spec = yaml.safe_load(spec_path.read_text())
    assert spec_path.read_text().startswith("$schema: https://azuremlschemas")
    assert spec["additional_includes"] == ["../../src/chatft"]
    assert spec["environment"] == "azureml:chatft-cpu:1"
    assert set(component.inputs) == set(spec["inputs"]) and set(component.outputs) == set(spec["outputs"])

    command = " ".join(spec["command"].split())
    parser = prep_data.build_parser()
    parser_flags = {option for action in parser._actions for option in action.option_strings}
    for name, declared in spec["inputs"].items():
        value = f"${{{{inputs.{name}}}}}"
        flag = f"--{name} '{value}'" if name == "hf_split" else f"--{name} {value}"  # quoted: brackets are globs
        assert (f"$[[{flag}]]" in command) == bool(declared.get("optional")), name
        assert flag in command and f"--{name}" in parser_flags, name
    for name in spec["outputs"]:
        assert f"--{name} ${{{{outputs.{name}}}}}" in command and f"--{name}" in parser_flags, name
    assert parser_flags - {"-h", "--help"} == {f"--{name}" for name in [*spec["inputs"], *spec["outputs"]]}
    defaults = prep_data.parse_args(["--train_data", "t", "--validation_data", "v", "--split_info", "s"])
    for name in ("hf_split", "validation_fraction", "seed"):
        assert getattr(defaults, name) == spec["inputs"][name]["default"]
