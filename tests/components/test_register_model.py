"""register_model.py: the real script in a component snapshot, registering a tiny model into a tmp SQLite registry.

Input checks: test_register_model_inputs.py; on a simulated Azure ML tracking service: test_register_model_azureml.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import registration
from tests.helpers.registration import pipeline_runs, register_ok, run_register, tracking_uri, upstream

# Fixtures shared with the other register_model tests.
snapshot, tuned_model = registration.snapshot, registration.tuned_model


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite tracking store with an experiment whose artifacts stay in tmp, like the local backend's."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("register-test", artifact_location=(root / "artifacts").as_uri())
    return {"uri": uri, "client": client, "experiment_id": experiment_id, "root": root}


def champion_version(registry: dict) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(registry["client"].get_model_version_by_alias("chat-ft", "champion").version)
    except MlflowException:
        return None


@pytest.fixture(scope="module")
def registered(snapshot, registry, tuned_model, tmp_path_factory):
    """The first registration in the module: gate passed, inside a pipeline run with a finetune sibling."""
    tmp = tmp_path_factory.mktemp("registered")
    parent, step = pipeline_runs(registry)
    info = register_ok(snapshot, registry, tuned_model, tmp, {"passed": True, "reason": "8.25 <= 12.5"}, step)
    return info, step, parent, tmp


def test_model_info_names_the_registered_version(registered, registry):
    info, run_id, _, _ = registered
    assert info["name"] == "chat-ft"
    latest = max(int(v.version) for v in registry["client"].search_model_versions("name='chat-ft'"))
    assert info["version"] == str(latest)
    assert info["model_uri"] == f"models:/chat-ft/{info['version']}"
    assert info["run_id"] == run_id  # attached to the step's run, not a new one
    assert info["quality_gate"] == "passed" and info["quality_gate_reason"] == "8.25 <= 12.5"
    assert info["champion"] is True and info["champion_via"] == "alias"


def test_version_carries_lineage_tags(registered, registry):
    info, run_id, parent, _ = registered
    tags = registry["client"].get_model_version("chat-ft", info["version"]).tags
    assert tags["run_id"] == run_id
    assert tags["pipeline_run_id"] == parent
    assert tags["data_fingerprint"] == "f1ng3rpr1nt"
    assert tags["base_model"] == "tiny-llama"
    assert tags["method"] == "lora"  # from train_metrics.json
    assert tags["quality_gate"] == "passed" and tags["quality_gate_reason"] == "8.25 <= 12.5"
    assert tags["eval.metrics.tuned.perplexity"] == "8.25"
    assert tags["eval.metrics.base.perplexity"] == "12.5"
    assert "eval.metrics.base.rougeL" not in tags  # None is not a metric
    assert "eval.quality_gate.passed" not in tags  # a boolean is not a metric
    assert info["tags"] == tags
    run_tags = registry["client"].get_run(run_id).data.tags
    assert run_tags["registered_model"] == f"chat-ft:{info['version']}"
    # The same code path as on Azure ML: no LoggedModel is created here either.
    assert not registry["client"].search_logged_models([registry["experiment_id"]])


def test_model_card_says_what_went_in_and_what_came_out(registered):
    _, _, parent, tmp = registered
    card = (tmp / "info" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: chat-ft\n")
    assert "fine-tuned from **tiny-llama** (lora; adapter merged" in card
    assert f"pipeline_run_id: `{parent}`" in card
    # Data: fingerprint and counts from split_info.json.
    assert "fingerprint: `f1ng3rpr1nt`" in card
    assert "20 valid records, 16 train / 4 validation" in card
    assert "evaluated on: 4 validation chats" in card
    # Hyper-parameters from the finetune run, training facts from train_metrics.json; folders left out.
    assert "| learning_rate | `0.001` |" in card and "| lora_r | `16` |" in card
    assert "merged_model" not in card.split("## Training")[1].split("## Evaluation")[0]
    assert "| optimizer steps | 14 |" in card and "| final train loss | 2.476 |" in card
    assert "| trainable / total parameters | 4,884,480 / 139,399,488 (3.50%) |" in card
    # Metrics: one column per evaluated model, one row per numeric metric; a missing value is a dash.
    assert "| metric | base | tuned |" in card
    assert "| perplexity | 12.5 | 8.25 |" in card
    assert "| token_accuracy | – | 0.5 |" in card
    assert "**passed**: 8.25 <= 12.5" in card and "This version becomes `champion` (previous: none)." in card
    assert "## Intended use" in card and "## Limits" in card
    assert "Context: 1,024 tokens" in card  # the tiny model's max_position_embeddings


def test_model_card_is_stored_with_the_model_and_described_in_the_registry(registered, registry, tmp_path):
    import mlflow

    info, _, _, tmp = registered
    with tracking_uri(registry["uri"]):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(tmp_path)))
    assert (local / "artifacts" / "MODEL_CARD.md").read_text() == (tmp / "info" / "MODEL_CARD.md").read_text()
    description = registry["client"].get_model_version("chat-ft", info["version"]).description
    assert "Quality gate passed (8.25 <= 12.5); registered as champion" in description


def test_registered_model_holds_the_checkpoint_unchanged(registered, registry, tuned_model, tmp_path):
    import mlflow

    from chatft.model_source import find_model_dir

    info = registered[0]
    with tracking_uri(registry["uri"]):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(tmp_path)))
    checkpoint = find_model_dir(local)  # what score.py does with AZUREML_MODEL_DIR
    assert checkpoint == local / "artifacts" / "merged_model"  # the key evaluate reads for the champion
    for original in tuned_model.iterdir():
        assert (checkpoint / original.name).read_bytes() == original.read_bytes(), original.name
    assert "python_function" in (local / "MLmodel").read_text()
    assert (local / "code" / "chatft" / "serving" / "contract.py").is_file()  # the endpoint's code, as a library
    assert not (local / "code" / "score.py").exists()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements and "torchvision" not in requirements


@pytest.mark.slow
def test_registered_pyfunc_answers_like_the_endpoint(registered, registry, monkeypatch):
    import mlflow

    request = {"input_data": {"input_string": [{"role": "user", "content": "Hi"}], "parameters": {"max_new_tokens": 3}}}
    monkeypatch.setattr(sys, "path", list(sys.path))  # loading puts the model's code folder on sys.path: undo after
    with tracking_uri(registry["uri"]):
        model = mlflow.pyfunc.load_model("models:/chat-ft@champion")
    reply = model.predict(request)
    assert set(reply) == {"output"} and isinstance(reply["output"], str)


def test_champion_only_on_a_passed_gate_and_moves_to_the_newer_version(
    registered, snapshot, registry, tuned_model, tmp_path
):
    first = registered[0]
    assert champion_version(registry) == first["version"]

    failed = {"passed": False, "reason": "tuned perplexity 14.0 > 1 × base perplexity 12.5 = 12.5"}
    versions_before = len(registry["client"].search_model_versions("name='chat-ft'"))
    out = tmp_path / "failed"
    result, _ = run_register(snapshot, registry, tuned_model, upstream(out, failed), out / "info")
    assert result.returncode != 0
    assert "quality gate failed: tuned perplexity 14.0 > 1 × base perplexity 12.5" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(registry["client"].search_model_versions("name='chat-ft'")) == versions_before  # nothing registered
    assert champion_version(registry) == first["version"]
    assert not (out / "info" / "model_info.json").exists()

    unchecked = register_ok(snapshot, registry, tuned_model, tmp_path / "unchecked", None)
    assert unchecked["champion"] is False and unchecked["quality_gate"] == "not checked"
    assert champion_version(registry) == first["version"]

    newer = register_ok(snapshot, registry, tuned_model, tmp_path / "newer", {"passed": True, "reason": "ok"})
    assert newer["champion"] is True and newer["previous_champion"] == first["version"]
    assert champion_version(registry) == newer["version"]  # the alias moved
    assert (
        f"(previous: chat-ft version {first['version']})" in (tmp_path / "newer" / "info" / "MODEL_CARD.md").read_text()
    )
