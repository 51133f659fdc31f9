"""prep_data run for real: local JSONL and an offline Hugging Face dataset folder, split seeded and lossless."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from chatft.errors import exit_on_error
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "prep_data"


# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


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


def _ultrachat_like(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A local dataset folder laid out like HuggingFaceH4/ultrachat_200k (data/<split>-NNNNN-of-NNNNN.parquet)."""
    from datasets import Dataset

    rows = []
    for i in range(40):
        messages = [{"role": "user", "content": f"Prompt {i}"}, {"role": "assistant", "content": f"Reply {i}"}]
        if i == 0:
            messages[1]["name"] = "helper"  # Arrow then gives every other message "name": null
        rows.append({"prompt": f"Prompt {i}", "prompt_id": f"{i:04x}", "messages": messages})
    folder = tmp_path / "ultrachat_tiny"
    (folder / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(folder / "data" / "train_sft-00000-of-00001.parquet")
    Dataset.from_list(rows[:5]).to_parquet(folder / "data" / "test_sft-00000-of-00001.parquet")
    return folder, rows


def test_hugging_face_dataset_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    calls = []
    real_load_dataset = datasets.load_dataset

    def recording_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return real_load_dataset(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", recording_load_dataset)
    folder, rows = _ultrachat_like(tmp_path)

    exit_code, train, validation, info = run_prep(
        tmp_path / "out", "--hf_dataset", str(folder), "--hf_split", "train_sft[:50%]", "--validation_fraction", "0.25"
    )

    assert exit_code == 0
    assert calls == [((str(folder),), {"split": "train_sft[:50%]", "revision": None})]
    assert (len(train), len(validation)) == (15, 5)
    written = sorted((json.loads(line) for line in train + validation), key=lambda r: r["messages"][0]["content"])
    expected = sorted(({"messages": row["messages"]} for row in rows[:20]), key=lambda r: r["messages"][0]["content"])
    assert written == expected  # only "messages"; the nulls Arrow added are gone, the real "name" kept
    assert info["source"] == {
        "type": "huggingface",
        "dataset": str(folder),
        "split": "train_sft[:50%]",
        "revision": None,
        "resolved_revision": None,  # a local folder has no Hub commit
    }


HUB_NAME = "HuggingFaceH4/ultrachat_200k"
PINNED = "0123456789abcdef0123456789abcdef01234567"  # a made-up commit id


def _hub_cache(tmp_path: Path, monkeypatch, commit: str = PINNED) -> list[dict]:
    """The datasets cache as ``load_dataset(HUB_NAME, revision=commit)`` leaves it after a download, offline.

    datasets keeps a Hub dataset under <cache>/HuggingFaceH4___ultrachat_200k/default/0.0.0/<commit>/ and, with
    HF_HUB_OFFLINE=1, loads it from there. The folder is written by datasets' own parquet builder (the Hub serves
    ultrachat_200k as parquet) from local files laid out like the real repository, then moved under the Hub name.
    """
    import datasets
    from datasets.packaged_modules.parquet.parquet import Parquet

    folder, rows = _ultrachat_like(tmp_path)
    cache = tmp_path / "hf_cache"
    data_files = {split: str(folder / "data" / f"{split}-*.parquet") for split in ("train_sft", "test_sft")}
    builder = Parquet(
        cache_dir=str(cache), dataset_name="ultrachat_200k", hash=commit, config_id="default", data_files=data_files
    )
    builder.download_and_prepare()
    (cache / "ultrachat_200k").rename(cache / "HuggingFaceH4___ultrachat_200k")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return rows


def test_hub_dataset_at_a_pinned_revision_offline(tmp_path, monkeypatch):
    rows = _hub_cache(tmp_path, monkeypatch)
    flags = ("--hf_dataset", HUB_NAME, "--hf_split", "train_sft[:50%]", "--hf_revision", PINNED)

    exit_code, train, validation, info = run_prep(tmp_path / "out", *flags)
    again = run_prep(tmp_path / "again", *flags)

    assert exit_code == 0
    assert (len(train), len(validation)) == (16, 4)
    written = sorted(json.loads(line)["messages"][0]["content"] for line in train + validation)
    assert written == sorted(row["prompt"] for row in rows[:20])  # ultrachat's prompt opens its messages
    assert all(set(json.loads(line)) == {"messages"} for line in train + validation)  # prompt, prompt_id dropped
    assert info["source"] == {
        "type": "huggingface",
        "dataset": HUB_NAME,
        "split": "train_sft[:50%]",
        "revision": PINNED,
        "resolved_revision": PINNED,
    }
    assert again[1:] == (train, validation, info)  # same revision, seed and fraction: same bytes, same fingerprint


def test_branch_revision_records_the_commit_it_resolved_to(tmp_path, monkeypatch):
    _hub_cache(tmp_path, monkeypatch)

    _, _, _, info = run_prep(
        tmp_path / "out", "--hf_dataset", HUB_NAME, "--hf_split", "test_sft", "--hf_revision", "main"
    )

    assert (info["source"]["revision"], info["source"]["resolved_revision"]) == ("main", PINNED)


def test_a_cached_copy_of_another_revision_is_refused(tmp_path, monkeypatch, capsys):
    # Offline, datasets takes whatever revision is cached; a pinned commit must not silently become another one.
    _hub_cache(tmp_path, monkeypatch, commit="f" * 40)

    exit_code = run_prep(
        tmp_path / "out", "--hf_dataset", HUB_NAME, "--hf_split", "train_sft", "--hf_revision", PINNED
    )[0]

    assert exit_code == 2
    err = capsys.readouterr().err
    assert f"the copy datasets loaded is revision {'f' * 40}, not the pinned {PINNED}" in err
    assert not (tmp_path / "out" / "train").exists()


def test_a_hub_dataset_that_is_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "empty_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)

    exit_code = run_prep(tmp_path / "out", "--hf_dataset", HUB_NAME, "--hf_revision", PINNED)[0]

    assert exit_code == 2
    err = capsys.readouterr().err
    assert f"prep_data: {HUB_NAME} [train_sft[:1%]] at revision {PINNED}: cannot load it:" in err


def test_hugging_face_dataset_without_messages_column(tmp_path, monkeypatch, capsys):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "plain"
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list([{"text": "hello"}] * 4).to_parquet(folder / "data" / "train-00000-of-00001.parquet")

    assert run_prep(tmp_path / "out", "--hf_dataset", str(folder), "--hf_split", "train")[0] == 2
    assert "no 'messages' column (columns: text)" in capsys.readouterr().err


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
