"""The real pipeline, all eight steps, on a tiny model and 40 chats: run, serve, answer, then reuse.

This is `make run` in miniature: the same component specs, pipeline definition and local backend,
with a tiny random Llama instead of SmolLM2 and a few optimizer steps instead of an epoch.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import requests

from chatft.processes import free_port
from pipelines.endpoint_local import find_record, stop
from pipelines.finetune_pipeline import build_pipeline
from pipelines.local_backend import LocalBackend
from pipelines.settings import PROJECT_ROOT, RunSettings
from tests.helpers.chat_data import make_conversations, write_jsonl

pytestmark = pytest.mark.slow

SEED_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "Question 3.0 about my router?"}],
        "parameters": {"temperature": 0.7, "max_new_tokens": 16},
    }
}


# The tiny model is random and trains for two steps: whatever it measures, the gate must pass, because this test is
# about plumbing. Every threshold at its spec's most lenient value (components/evaluate/component.yml), the safety
# check still run so its plumbing is covered too.
LENIENT_GATE = {
    "max_perplexity_ratio": 100.0,
    "max_champion_ratio": 100.0,
    "safety_check": True,
    "max_refusal_drop": 1.0,
    "max_over_refusal": 1.0,
}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_llama_dir):
    root = tmp_path_factory.mktemp("e2e") / "outputs"
    # Inputs must live in the project or under the output root: stage the tiny assets there.
    model = shutil.copytree(tiny_llama_dir, root / "assets" / "tiny-llama")
    data = write_jsonl(root / "assets" / "chats" / "chats.jsonl", make_conversations(40, seed=3)).parent
    settings = RunSettings(
        experiment_name="e2e",
        base_model=str(model),
        base_model_name="tiny-llama",
        raw_data=str(data),
        steps={
            "validate_chat_jsonl": {"min_valid_records": 5},  # 40 chats → 8 in validation
            "finetune": {"max_steps": 2, "per_device_train_batch_size": 2, "max_seq_length": 128, "save_steps": 1},
            "evaluate": {"num_generation_samples": 1, "max_new_tokens": 8, "max_seq_length": 128, **LENIENT_GATE},
            "deploy_endpoint": {"target": "local", "port": free_port()},
        },
    )
    backend = LocalBackend(root, PROJECT_ROOT, stream_logs=False)
    first = backend.run(build_pipeline(settings), "e2e")
    started = time.perf_counter()
    second = backend.run(build_pipeline(settings), "e2e")
    second_seconds = time.perf_counter() - started
    yield root, first, second, second_seconds
    path, record = find_record(root, None)
    stop(path, record)


def test_every_step_completes_and_mlflow_holds_the_registered_model(pipeline_run):
    from mlflow.tracking import MlflowClient

    root, first, _, _ = pipeline_run
    assert [s.status for s in first.steps] == ["completed"] * 8
    info = json.loads((first.outputs["model_info"] / "model_info.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version(info["name"], str(info["version"]))
    assert info["quality_gate"] == "passed"  # the lenient gate above, not the tiny model's luck
    assert version.tags["base_model"] == "tiny-llama"
    assert "data_fingerprint" in version.tags
    parent = client.get_run(first.run_id)
    assert parent.info.status == "FINISHED"
    tuned_run = client.get_run(first.steps[3].run_id)
    assert tuned_run.data.params, "finetune logged no parameters"
    assert "train_loss" in tuned_run.data.metrics or "loss" in tuned_run.data.metrics


def test_the_endpoint_answers_the_seed_request_over_http(pipeline_run):
    root, first, _, _ = pipeline_run
    info = json.loads((first.outputs["endpoint_info"] / "endpoint_info.json").read_text())
    assert info["url"].startswith("http://127.0.0.1:")
    response = requests.post(info["url"], json=SEED_REQUEST, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()["output"]
    assert isinstance(answer, str) and answer.strip(), f"empty answer: {response.json()}"


def test_a_second_run_reuses_every_deterministic_step(pipeline_run):
    _, first, second, second_seconds = pipeline_run
    statuses = {s.name: s.status for s in second.steps}
    assert statuses.pop("endpoint_deployment") == "completed"  # not deterministic: always runs
    assert set(statuses.values()) == {"reused"}
    assert {s.name: s.cache_key for s in second.steps} == {s.name: s.cache_key for s in first.steps}
    # The endpoint kept serving the same model: the redeploy is a health check, not a restart.
    assert second_seconds < 0.25 * first.seconds
