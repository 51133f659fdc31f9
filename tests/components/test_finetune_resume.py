"""finetune.py resuming: from the last complete checkpoint, after a SIGKILL; and the errors it stops on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.chat_data import write_chat_splits
from tests.helpers.finetune_runs import COMPONENT_DIR, REPO, finetune, latest_run, run_args

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chat_splits(tmp_path_factory.mktemp("chats"))


def test_resume_continues_from_the_last_complete_checkpoint(tiny_phi3_dir, chats, tmp_path, mlflow_store):
    """A run stopped after step 2 and restarted ends where an uninterrupted run ends, weights included."""
    from safetensors.torch import load_file

    # Constant LR and no dropout: the interrupted run can then match the uninterrupted one exactly.
    same = {"lr_scheduler_type": "constant", "warmup_ratio": 0.0, "lora_dropout": 0.0, "save_steps": 2}
    finetune.main(finetune.parse_args(run_args(tiny_phi3_dir, chats, tmp_path / "straight", validation=False, **same)))

    out = tmp_path / "interrupted"
    first = finetune.main(
        finetune.parse_args(run_args(tiny_phi3_dir, chats, out, validation=False, max_steps=2, **same))
    )
    assert first["global_step"] == 2 and (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    (out / "checkpoints" / "checkpoint-3").mkdir()  # a save cut short by the pre-emption: no trainer_state.json

    resumed = finetune.main(finetune.parse_args(run_args(tiny_phi3_dir, chats, out, validation=False, **same)))
    assert resumed["resumed_from_step"] == 2 and resumed["global_step"] == 4
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    client, run = mlflow_store.client, latest_run(mlflow_store)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [3, 4]  # only the steps left
    straight = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    continued = load_file(out / "adapter" / "adapter_model.safetensors")
    assert straight.keys() == continued.keys()
    for name in straight:
        assert (straight[name] - continued[name]).abs().max() < 1e-5, name


def test_missing_train_data_fails_before_loading_the_model(tiny_phi3_dir, tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(finetune.ConfigError, match=r"train_data: .*no \.jsonl files"):
        finetune.main(finetune.parse_args(run_args(tiny_phi3_dir, tmp_path, tmp_path / "out", validation=False)))


def test_qlora_on_cpu_exits_with_a_clear_message(tiny_llama_dir, chats, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run qlora")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # as additional_includes puts chatft beside the script
    command = [sys.executable, "finetune.py", *run_args(tiny_llama_dir, chats, tmp_path, method="qlora")]
    result = subprocess.run(command, cwd=COMPONENT_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2  # a usage error (chatft.errors.UsageError)
    assert "finetune: method=qlora needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "adapter").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_at_its_last_checkpoint_and_ends_at_the_same_step(tiny_llama_dir, chats, tmp_path):
    """SIGKILL the real script once a checkpoint is on disk (a pre-empted node), re-run it on the same folders."""
    # An epoch count, not max_steps: the step total then follows from the data, as in a real run.
    inputs = {"max_steps": -1, "num_train_epochs": 6, "save_steps": 2, "eval_steps": 0}
    out = tmp_path / "killed"
    command = [sys.executable, "finetune.py", *run_args(tiny_llama_dir, chats, out, validation=False, **inputs)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # as additional_includes puts chatft beside the script
    deadline = time.monotonic() + 180
    with (
        (tmp_path / "killed.log").open("wb") as log,
        subprocess.Popen(command, cwd=COMPONENT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT) as process,
    ):
        try:
            while finetune.last_complete_checkpoint(out / "checkpoints", remove_incomplete=False) is None:
                assert process.poll() is None, f"ended before a checkpoint: {(tmp_path / 'killed.log').read_text()}"
                assert time.monotonic() < deadline, "no checkpoint within 180 s"
                time.sleep(0.02)
        finally:
            process.kill()  # SIGKILL: no handler runs, like a pre-empted node
            process.wait()
    saved = finetune.last_complete_checkpoint(out / "checkpoints", remove_incomplete=False)
    saved_step = int(saved.name.split("-")[1])
    assert not (out / "merged_model" / "train_metrics.json").exists()  # it was stopped mid-run

    rerun = subprocess.run(command, cwd=COMPONENT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {saved} (step {saved_step})" in rerun.stdout
    resumed = json.loads((out / "merged_model" / "train_metrics.json").read_text())

    straight = finetune.main(
        finetune.parse_args(run_args(tiny_llama_dir, chats, tmp_path / "straight", validation=False, **inputs))
    )
    assert resumed["resumed_from_step"] == saved_step < straight["global_step"]
    assert resumed["global_step"] == straight["global_step"] and resumed["epoch"] == pytest.approx(6)


@pytest.mark.gpu
def test_qlora_trains_a_step_on_a_gpu(tiny_llama_dir, chats, tmp_path):
    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("QLoRA needs a CUDA GPU and bitsandbytes; this machine has no GPU (the CPU error is tested above)")
    metrics = finetune.main(
        finetune.parse_args(run_args(tiny_llama_dir, chats, tmp_path, validation=False, method="qlora", max_steps=1))
    )
    assert metrics["global_step"] == 1 and metrics["method"] == "qlora" and metrics["train_loss"] > 0


def test_a_checkpoint_whose_trainer_state_was_cut_off_counts_as_incomplete(tmp_path):
    # A SIGKILL while the Trainer writes trainer_state.json (in place) leaves it empty or partial: resuming from it
    # failed on the JSON. It is removed like a checkpoint with no state at all; the one before it is resumed.
    folder = tmp_path / "checkpoints"
    for step, state in ((2, '{"global_step": 2}'), (4, ""), (6, '{"global_st')):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state, encoding="utf-8")
    assert finetune.last_complete_checkpoint(folder, remove_incomplete=False) == folder / "checkpoint-2"
    assert finetune.last_complete_checkpoint(folder) == folder / "checkpoint-2"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2"]
