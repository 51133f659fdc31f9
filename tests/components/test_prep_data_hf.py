"""prep_data on Hugging Face datasets, offline: local dataset folders and Hub caches at pinned revisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.prep_runs import run_prep

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


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
