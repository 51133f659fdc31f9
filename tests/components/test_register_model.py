"""register_model.py: the real script in a component snapshot, registering a tiny model into a tmp SQLite registry."""

from __future__ import annotations

import importlib.util
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
def registry(tmp_path_factory):
    """A SQLite tracking store with an experiment whose artifacts stay in tmp, like the local backend's."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("register-test", artifact_location=(root / "artifacts").as_uri())
    return {"uri": uri, "client": client, "experiment_id": experiment_id, "root": root}


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
    assert (local / "code" / "score.py").is_file() and (local / "code" / "chatft" / "model_source.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "+cpu" not in requirements and "torchvision" not in requirements


@pytest.mark.slow
def test_registered_pyfunc_answers_like_the_endpoint(registered, registry, monkeypatch):
    import mlflow

    request = {"input_data": {"input_string": [{"role": "user", "content": "Hi"}], "parameters": {"max_new_tokens": 3}}}
    # Loading puts the model's code folder on sys.path and imports its score.py as "score": undo both after.
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        with tracking_uri(registry["uri"]):
            model = mlflow.pyfunc.load_model("models:/chat-ft@champion")
        reply = model.predict(request)
    finally:
        sys.modules.pop("score", None)
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


# ---- input checks, in-process (they all run before MLflow is imported) -------------------------------------------


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("register_model_under_test", COMPONENT / "register_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gate", [{"passed": "false", "reason": "x"}, {"reason": "x"}, {"passed": 1}])
def test_quality_gate_must_say_passed(script, tmp_path, gate):
    with pytest.raises(script.RegistrationError, match='quality_gate.json: "passed" must be true or false'):
        script.read_quality_gate(str(write_json(tmp_path, "quality_gate.json", gate)))


def test_quality_gate_folder_without_the_file_is_an_error(script, tmp_path):
    with pytest.raises(script.RegistrationError, match="quality_gate.json: not found"):
        script.read_quality_gate(str(tmp_path))


def test_gate_verdicts(script, tmp_path):
    assert script.gate_verdict(script.read_quality_gate(None)) == "not checked"
    failed = script.read_quality_gate(str(write_json(tmp_path, "quality_gate.json", {"passed": False})))
    assert script.gate_verdict(failed) == "failed"


def test_missing_fingerprint_is_an_error(script, tmp_path, tiny_llama_dir):
    folders = upstream(tmp_path, None)
    write_json(folders["split_info"], "split_info.json", {"n": 20})
    args = script.parse_args(
        [
            "--tuned_model",
            str(tiny_llama_dir),
            "--eval_report",
            str(folders["eval_report"]),
            "--split_info",
            str(folders["split_info"]),
            "--model_name",
            "m",
            "--base_model_name",
            "b",
            "--model_info",
            str(tmp_path / "o"),
        ]
    )
    with pytest.raises(script.RegistrationError, match='split_info.json: no "fingerprint"'):
        script.main(args)


def test_tuned_model_without_a_checkpoint_is_an_error(script, tmp_path, monkeypatch):
    folders = upstream(tmp_path, None)
    (tmp_path / "empty").mkdir()
    args = script.parse_args(
        [
            "--tuned_model",
            str(tmp_path / "empty"),
            "--eval_report",
            str(folders["eval_report"]),
            "--split_info",
            str(folders["split_info"]),
            "--model_name",
            "m",
            "--base_model_name",
            "b",
            "--model_info",
            str(tmp_path / "o"),
        ]
    )
    # What the snapshot holds beside the script, found where a checkout keeps it.
    monkeypatch.setattr(script, "SCORE_SCRIPT", REPO / "components" / "deploy_endpoint" / "score.py")
    monkeypatch.setattr(script, "HERE", REPO / "src")
    with pytest.raises(script.RegistrationError, match="tuned_model: .*no config.json with weights found"):
        script.main(args)


def test_metric_tags_flatten_numbers_only(script):
    report = {"a": 1, "b": {"c": 0.123456789, "d": [1, 2], "e": True, "f": None, "g": "text"}}
    assert script.metric_tags(report) == {"eval.a": "1", "eval.b.c": "0.123457"}


# ---- the champion pointer on Azure ML, against a fake registry -----------------------------------------------------


@pytest.fixture(scope="module")
def champion():
    from chatft import registry

    return registry


class AzureLikeRegistry:
    """A stand-in for MlflowClient on an azureml:// registry, whose alias API is not supported (a simulation:
    what the service answers is not known here, only that aliases are missing from its documented capabilities)."""

    def __init__(self, versions: int):
        from mlflow.entities.model_registry import ModelVersion

        self.versions = {str(v): ModelVersion("chat-ft", str(v), 0, tags={}) for v in range(1, versions + 1)}

    def set_registered_model_alias(self, *args):
        from mlflow.exceptions import MlflowException

        raise MlflowException("alias API not available")  # a code other than ENDPOINT_NOT_FOUND: INTERNAL_ERROR

    get_model_version_by_alias = set_registered_model_alias

    def set_model_version_tag(self, name, version, key, value):
        self.versions[version]._tags[key] = value

    def delete_model_version_tag(self, name, version, key):
        del self.versions[version]._tags[key]

    def search_model_versions(self, filter_string):
        assert filter_string == "name='chat-ft'"
        return list(self.versions.values())


def test_azure_falls_back_to_a_champion_tag_that_moves(champion):
    client = AzureLikeRegistry(versions=3)
    assert champion.get_champion(client, "chat-ft", azure=True) is None
    assert champion.set_champion(client, "chat-ft", "2", azure=True) == "tag"
    assert champion.get_champion(client, "chat-ft", azure=True).version == "2"
    assert champion.set_champion(client, "chat-ft", "3", azure=True) == "tag"
    assert champion.get_champion(client, "chat-ft", azure=True).version == "3"
    assert [v for v, mv in client.versions.items() if mv.tags.get("champion") == "true"] == ["3"]


def test_a_failing_alias_call_off_azure_is_an_error(champion):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="alias API not available"):
        champion.set_champion(AzureLikeRegistry(versions=1), "chat-ft", "1", azure=False)


def test_only_azureml_registries_get_the_fallback(champion):
    assert champion.on_azure("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r")
    assert not champion.on_azure("sqlite:///outputs/mlflow.db")
    assert not champion.on_azure("databricks")


# ---- against a simulation of Azure ML's tracking service: a real mlflow server behind a proxy that answers 404 to
# the routes Azure ML does not serve (logged models, aliases; tests/helpers/azureml_tracking_proxy.py) -------------

AZURE_MODEL = "chat-ft-azure-sim"  # the server is shared by the session: a name of this module's own


@pytest.fixture(scope="module")
def azure_registry(azureml_tracking):
    from mlflow import MlflowClient

    client = MlflowClient(azureml_tracking.uri)
    # No artifact_location: the server's default (mlflow-artifacts:/, uploaded through the tracking service).
    experiment_id = client.create_experiment("register-azureml-simulation")
    return {
        "uri": azureml_tracking.uri,
        "client": client,
        "experiment_id": experiment_id,
        "model_name": AZURE_MODEL,
        "proxy": azureml_tracking,
    }


@pytest.mark.slow
def test_the_simulated_azure_tracking_service_refuses_log_model(azure_registry):
    """What register_model did before: MLflow 3's log_model creates a LoggedModel first, and the service 404s it."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import PythonModel

    class Echo(PythonModel):  # never saved: the call fails before
        _skip_type_hint_validation = True

        def predict(self, context, model_input, params=None):
            return model_input

    probe = Echo()
    seen = len(azure_registry["proxy"].requests)
    with (
        tracking_uri(azure_registry["uri"]),
        mlflow.start_run(experiment_id=azure_registry["experiment_id"]),
        pytest.raises(MlflowException, match=r"logged-models failed with error code 404") as err,
    ):
        mlflow.pyfunc.log_model(name="model", python_model=probe, pip_requirements=["mlflow"])
    assert err.value.error_code == "ENDPOINT_NOT_FOUND"
    assert ("POST", "/api/2.0/mlflow/logged-models", 404) in azure_registry["proxy"].requests[seen:]


@pytest.fixture(scope="module")
def registered_on_azure(snapshot, azure_registry, tuned_model, tmp_path_factory):
    """Two registrations from the component snapshot, over HTTP, both with a passed gate; the proxy's requests."""
    proxy = azure_registry["proxy"]
    seen = len(proxy.requests)
    tmp = tmp_path_factory.mktemp("registered_on_azure")
    _, step = pipeline_runs(azure_registry)
    first = register_ok(snapshot, azure_registry, tuned_model, tmp / "first", {"passed": True, "reason": "ok"}, step)
    second = register_ok(snapshot, azure_registry, tuned_model, tmp / "second", {"passed": True, "reason": "ok"})
    return first, second, step, proxy.requests[seen:]


@pytest.mark.slow
def test_registers_on_the_simulated_azure_tracking_service_without_logged_models(registered_on_azure, azure_registry):
    first, second, step, requests = registered_on_azure
    client = azure_registry["client"]
    assert first["run_id"] == step and first["model_uri"] == f"models:/{AZURE_MODEL}/{first['version']}"
    assert int(second["version"]) == int(first["version"]) + 1
    version = client.get_model_version(AZURE_MODEL, first["version"])
    assert version.run_id == step and version.tags["data_fingerprint"] == "f1ng3rpr1nt"
    # The one code path never touches the logged-models API, and registers the run's model folder.
    assert not [r for r in requests if "/logged-models" in r[1]], requests
    assert version.source.endswith(f"/{step}/artifacts/model"), version.source
    assert any(method == "PUT" and "/mlflow-artifacts/artifacts/" in path for method, path, _ in requests)


@pytest.mark.slow
def test_champion_falls_back_to_a_tag_that_moves_on_the_simulated_azure_service(
    registered_on_azure, azure_registry, champion
):
    first, second, _, requests = registered_on_azure
    client = azure_registry["client"]
    assert first["champion_via"] == "tag" and second["champion_via"] == "tag"
    assert second["previous_champion"] == first["version"]  # read back through the tag by register_model itself
    refused = [path.split("?")[0] for method, path, status in requests if status == 404 and "/alias" in path]
    assert "/api/2.0/mlflow/registered-models/alias" in refused  # the alias route was tried and 404'd
    holders = [v.version for v in client.search_model_versions(f"name='{AZURE_MODEL}'") if v.tags.get("champion")]
    assert holders == [second["version"]]  # moved, not copied
    # The look-up evaluate makes (the same chatft.registry), over HTTP with no azureml:// URI.
    assert champion.get_champion(client, AZURE_MODEL, azure=False).version == second["version"]


@pytest.mark.slow
def test_registered_version_downloads_where_deploy_and_evaluate_look(
    registered_on_azure, azure_registry, tuned_model, tmp_path
):
    import mlflow
    import yaml

    from chatft.model_source import find_model_dir

    first, _, step, _ = registered_on_azure
    with tracking_uri(azure_registry["uri"]):  # what deploy_endpoint.download_model does
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=first["model_uri"], dst_path=str(tmp_path)))
    checkpoint = find_model_dir(local)
    assert checkpoint == local / "artifacts" / "merged_model"
    for original in tuned_model.iterdir():
        assert (checkpoint / original.name).read_bytes() == original.read_bytes(), original.name
    assert (local / "artifacts" / "MODEL_CARD.md").is_file() and (local / "code" / "score.py").is_file()
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert "python_function" in mlmodel["flavors"] and mlmodel["run_id"] == step
