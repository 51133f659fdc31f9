"""finetune.py as Azure ML's `distribution: pytorch` runs it: the same global batch trains the same model whether it
is 1 process × 8 accumulation steps or 2 processes × 4, and a 2-process run killed mid-way resumes where it was.

Why the equality holds (and what would break it): every rank packs the whole training set the same way (best-fit,
deterministic), the Trainer draws one seeded permutation of the packed rows on every rank, and accelerate hands rank
r the micro-batches r, r+W, r+2W, ...: one optimizer step sees the same 8 rows either way. The loss is token-weighted
over the global batch: the labelled-token count of all 8 rows is gathered across ranks (num_items_in_batch with
average_tokens_across_devices), each rank divides its token-sum by it, and the Trainer multiplies by the world size
to undo DDP's gradient mean. Averaging per-rank mean losses instead would weight a token by its rank's token count
and differ. Dropout is off (each rank would draw its own masks) and the learning rate is constant.
Tolerance: losses within 1e-5 relative, adapter weights within 1e-5 absolute (they are ~0.1); measured ~5e-7 and
~4e-7 on a 2-core AMD EPYC (Zen 4): summation order is the only difference.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pipelines.local_backend import RankGroup, run_ranks
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "finetune"
finetune = load_script("component_finetune_distributed", COMPONENT_DIR / "finetune.py")


# 4 optimizer steps of 8 packed 128-token rows; a checkpoint every 2 steps (what the killed run resumes from).
SAME = {
    "max_steps": 4,
    "per_device_train_batch_size": 1,
    "max_seq_length": 128,
    "learning_rate": 5e-3,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.0,
    "lora_dropout": 0.0,
    "precision": "fp32",
    "save_steps": 2,
    "eval_steps": 0,
}
GLOBAL_ROWS = 8


@pytest.fixture(scope="module")
def setup(tiny_phi3_dir, tmp_path_factory, mlflow_store):
    root = tmp_path_factory.mktemp("distributed")
    write_jsonl(root / "train" / "train.jsonl", make_conversations(48))
    # As the local backend gives a step: its own MLflow store, and chatft importable (additional_includes).
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "MLFLOW_TRACKING_URI": mlflow_store.uri,
        "MLFLOW_EXPERIMENT_ID": mlflow_store.experiment_id,
    }
    return tiny_phi3_dir, root, env


def command(model: Path, root: Path, out: Path, accumulation: int) -> str:
    flags = {
        **SAME,
        "gradient_accumulation_steps": accumulation,
        "base_model": model,
        "train_data": root / "train",
        "adapter": out / "adapter",
        "merged_model": out / "merged_model",
        "checkpoints": out / "checkpoints",
    }
    return " ".join([sys.executable, "finetune.py", *(f"--{k} {v}" for k, v in flags.items())])


def train(setup, name: str, processes: int) -> Path:
    model, root, env = setup
    out = root / name
    out.mkdir()
    log = out / "step.log"
    rc = run_ranks(command(model, root, out, GLOBAL_ROWS // processes), COMPONENT_DIR, env, log, 1, processes, False)
    assert rc == 0, log.read_text()[-4000:]
    return out


def losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name


@pytest.fixture(scope="module")
def two_processes(setup) -> Path:
    return train(setup, "two", processes=2)


@pytest.mark.slow  # real multi-process training: ~20-40 s per run on 2 cores
def test_one_process_times_8_trains_like_two_processes_times_4(setup, two_processes):
    one = train(setup, "one", processes=1)
    metrics = {
        p: json.loads((out / "merged_model" / "train_metrics.json").read_text())
        for p, out in ((1, one), (2, two_processes))
    }
    assert metrics[1]["world_size"] == 1 and metrics[2]["world_size"] == 2
    assert metrics[1]["global_batch_rows"] == metrics[2]["global_batch_rows"] == GLOBAL_ROWS
    assert (two_processes / "user_logs" / "std_log_process_1.txt").is_file()

    single, double = losses(one), losses(two_processes)
    assert sorted(single) == sorted(double) == [1, 2, 3, 4]
    assert len(set(single.values())) == 4  # every step trains on other rows: equal losses are not a constant
    for step in single:
        assert double[step] == pytest.approx(single[step], rel=1e-5), step
    trained = adapter(one)
    assert max(t.abs().max() for name, t in trained.items() if "lora_B" in name) > 1e-3  # LoRA B starts at 0
    assert_same_adapter(trained, adapter(two_processes))


@pytest.mark.slow
def test_two_processes_killed_after_a_checkpoint_resume_and_end_like_an_uninterrupted_run(setup, two_processes):
    model, root, env = setup
    out = root / "killed"
    out.mkdir()
    run = command(model, root, out, GLOBAL_ROWS // 2)
    group = RankGroup(run, COMPONENT_DIR, env, out / "step.log", nodes=1, per_node=2).start()
    deadline = time.monotonic() + 240
    try:
        while finetune.last_complete_checkpoint(out / "checkpoints", remove_incomplete=False) is None:
            assert all(p.poll() is None for p in group.processes), (out / "user_logs/std_log_process_0.txt").read_text()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
    finally:
        group.stop(signal.SIGKILL)  # both ranks at once, no handler runs: a pre-empted node
    saved = finetune.last_complete_checkpoint(out / "checkpoints", remove_incomplete=False)
    saved_step = int(saved.name.split("-")[1])
    assert saved_step < 4 and not (out / "merged_model" / "train_metrics.json").exists()

    rc = run_ranks(run, COMPONENT_DIR, env, out / "rerun.log", 1, 2, stream=False)
    assert rc == 0, (out / "rerun.log").read_text()[-4000:]
    assert f"resuming from {saved} (step {saved_step})" in (out / "rerun.log").read_text()
    resumed = json.loads((out / "merged_model" / "train_metrics.json").read_text())
    assert resumed["resumed_from_step"] == saved_step and resumed["global_step"] == 4 and resumed["world_size"] == 2
    straight = losses(two_processes)
    for step, loss in losses(out).items():
        assert loss == pytest.approx(straight[step], rel=1e-5), step
    assert_same_adapter(adapter(out), adapter(two_processes))


def test_distributed_strategies_map_to_deepspeed_zero_or_fsdp_and_are_refused_on_a_cpu(monkeypatch):
    import importlib.util

    assert finetune.strategy_config("ddp", "cpu") == {} == finetune.strategy_config("ddp", "cuda")
    for strategy in ("deepspeed_zero2", "deepspeed_zero3", "fsdp"):
        with pytest.raises(finetune.ConfigError, match=f"distributed_strategy={strategy} needs CUDA GPUs"):
            finetune.strategy_config(strategy, "cpu")
    fsdp = finetune.strategy_config("fsdp", "cuda")
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["activation_checkpointing"] is False and fsdp["fsdp_config"]["activation_checkpointing"] is True

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a)
    )
    with pytest.raises(finetune.ConfigError, match="needs the deepspeed package"):
        finetune.strategy_config("deepspeed_zero2", "cuda")
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real_find_spec(name, *a)
    )
    zero2 = finetune.strategy_config("deepspeed_zero2", "cuda")["deepspeed"]
    zero3 = finetune.strategy_config("deepspeed_zero3", "cuda")["deepspeed"]
    assert (
        zero2["zero_optimization"]["stage"] == 2
        and "stage3_gather_16bit_weights_on_model_save" not in zero2["zero_optimization"]
    )
    assert (
        zero3["zero_optimization"]["stage"] == 3
        and zero3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    )
    assert zero2["train_micro_batch_size_per_gpu"] == "auto"  # the Trainer fills it from per_device_train_batch_size
