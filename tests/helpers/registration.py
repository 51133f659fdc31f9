"""Run register_model as the pipeline does: upstream outputs, a component snapshot, a tracking store, a step run.

Shared by the register_model tests (local SQLite registry, the simulated Azure ML tracking service). The fixtures
here are imported by the test modules that use them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.components import snapshot_component

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "register_model"
EVAL_REPORT = {
    "validation_chats": 4,
    "metrics": {"base": {"perplexity": 12.5, "rougeL": None}, "tuned": {"perplexity": 8.25, "token_accuracy": 0.5}},
    "quality_gate": {"passed": True},
    "samples": [{"prompt": [], "base": {"rougeL": 0.1}}],
}
SPLIT_INFO = {"fingerprint": "f1ng3rpr1nt", "records": 20, "train_records": 16, "validation_records": 4}
# As finetune writes them (train_metrics.json in merged_model/, its run's parameters in MLflow).
TRAIN_METRICS = {
    "method": "lora",
    "device": "cpu",
    "precision": "fp32",
    "global_step": 14,
    "epoch": 1.0,
    "train_loss": 2.4762678146362305,
    "eval_loss_end": 1.9556,
    "train_tokens": 33606,
    "trainable_params": 4884480,
    "total_params": 139399488,
    "train_seconds": 208.2,
}
FINETUNE_PARAMS = {"method": "lora", "learning_rate": "0.001", "lora_r": "16", "merged_model": "/mnt/out/merged"}


@contextmanager
def tracking_uri(uri: str):
    """Point MLflow's global tracking URI at ``uri`` for a block, restoring whatever an earlier test set.

    Needed for models:/ look-ups, which MLflow 3.15 resolves through the global URI even with an explicit client.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        yield


def write_json(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return snapshot_component(COMPONENT, tmp_path_factory.mktemp("snap") / "register_model")


@pytest.fixture(scope="module")
def tuned_model(tiny_llama_dir, tmp_path_factory):
    """The tiny model as finetune leaves merged_model/: weights, tokenizer and train_metrics.json."""
    folder = shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("tuned") / "merged_model")
    (folder / "train_metrics.json").write_text(json.dumps(TRAIN_METRICS), encoding="utf-8")
    return folder


def upstream(tmp_path: Path, gate: dict | None) -> dict[str, Path]:
    folders = {
        "eval_report": write_json(tmp_path / "eval_report", "eval_report.json", EVAL_REPORT),
        "split_info": write_json(tmp_path / "split_info", "split_info.json", SPLIT_INFO),
    }
    if gate is not None:
        folders["quality_gate"] = write_json(tmp_path / "quality_gate", "quality_gate.json", gate)
    return folders


def pipeline_runs(registry: dict) -> tuple[str, str]:
    """A pipeline run with a finished finetune child run (its parameters, as finetune logs them); return
    (pipeline run id, a fresh register step run id under it), as the local backend and Azure ML nest them."""
    client, experiment = registry["client"], registry["experiment_id"]
    parent = client.create_run(experiment, run_name="chat_finetune").info.run_id
    finetune = client.create_run(experiment, run_name="tuned", tags={"mlflow.parentRunId": parent}).info.run_id
    for key, value in FINETUNE_PARAMS.items():
        client.log_param(finetune, key, value)
    client.set_terminated(finetune)
    step = client.create_run(experiment, run_name="registered", tags={"mlflow.parentRunId": parent})
    return parent, step.info.run_id


def run_register(
    snapshot: Path, registry: dict, tuned_model: Path, folders: dict, out: Path, run_id: str | None = None
):
    """Run the script as the local backend does: in the snapshot, attached to a step run."""
    run_id = run_id or registry["client"].create_run(registry["experiment_id"]).info.run_id
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_TRACKING_URI": registry["uri"], "MLFLOW_RUN_ID": run_id, "HOME": str(out.parent)})
    command = [sys.executable, "register_model.py", "--tuned_model", str(tuned_model)]
    for name, folder in folders.items():
        command += [f"--{name}", str(folder)]
    name = registry.get("model_name", "chat-ft")
    command += ["--model_name", name, "--base_model_name", "tiny-llama", "--model_info", str(out)]
    result = subprocess.run(command, cwd=snapshot, env=env, capture_output=True, text=True, timeout=120)
    return result, run_id


def register_ok(snapshot, registry, tuned_model, tmp: Path, gate: dict | None, run_id: str | None = None) -> dict:
    result, _ = run_register(snapshot, registry, tuned_model, upstream(tmp, gate), tmp / "info", run_id)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp / "info" / "model_info.json").read_text())
