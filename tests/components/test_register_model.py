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
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "register_model"
EVAL_REPORT = {
    "validation_chats": 20,
    "metrics": {"base": {"perplexity": 12.5, "rougeL": None}, "tuned": {"perplexity": 8.25, "token_accuracy": 0.5}},
    "quality_gate": {"passed": True},
    "samples": [{"prompt": [], "base": {"rougeL": 0.1}}],
}


def snapshot_component(folder: Path, dest: Path) -> Path:
    """Copy a component folder plus its additional_includes, as Azure ML and the local backend do."""
    spec = yaml.safe_load((folder / "component.yml").read_text(encoding="utf-8"))
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for include in spec.get("additional_includes", []):
        source = (folder / include).resolve()
        if source.is_dir():
            shutil.copytree(source, dest / source.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / source.name)
    return dest


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


def upstream(tmp_path: Path, gate: dict | None) -> dict[str, Path]:
    folders = {
        "eval_report": write_json(tmp_path / "eval_report", "eval_report.json", EVAL_REPORT),
        "split_info": write_json(tmp_path / "split_info", "split_info.json", {"fingerprint": "f1ng3rpr1nt", "n": 20}),
    }
    if gate is not None:
        folders["quality_gate"] = write_json(tmp_path / "quality_gate", "quality_gate.json", gate)
    return folders


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
    command += ["--model_name", "chat-ft", "--base_model_name", "tiny-llama", "--model_info", str(out)]
    result = subprocess.run(command, cwd=snapshot, env=env, capture_output=True, text=True, timeout=120)
    return result, run_id


@pytest.fixture(scope="module")
def registered(snapshot, registry, tiny_llama_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registered")
    result, run_id = run_register(
        snapshot, registry, tiny_llama_dir, upstream(tmp, {"passed": True, "reason": "8.25 <= 12.5"}), tmp / "info"
    )
    assert result.returncode == 0, result.stderr
    return json.loads((tmp / "info" / "model_info.json").read_text()), run_id


def test_model_info_names_the_registered_version(registered, registry):
    info, run_id = registered
    assert info["name"] == "chat-ft"
    latest = max(int(v.version) for v in registry["client"].search_model_versions("name='chat-ft'"))
    assert info["version"] == str(latest)
    assert info["model_uri"] == f"models:/chat-ft/{info['version']}"
    assert info["run_id"] == run_id  # attached to the step's run, not a new one


def test_version_carries_lineage_tags(registered, registry):
    info, run_id = registered
    tags = registry["client"].get_model_version("chat-ft", info["version"]).tags
    assert tags["run_id"] == run_id
    assert tags["data_fingerprint"] == "f1ng3rpr1nt"
    assert tags["base_model"] == "tiny-llama"
    assert tags["quality_gate"] == "passed" and tags["quality_gate_reason"] == "8.25 <= 12.5"
    assert tags["eval.metrics.tuned.perplexity"] == "8.25"
    assert tags["eval.metrics.base.perplexity"] == "12.5"
    assert "eval.metrics.base.rougeL" not in tags  # None is not a metric
    assert "eval.quality_gate.passed" not in tags  # a boolean is not a metric
    assert info["tags"] == tags
    run_tags = registry["client"].get_run(run_id).data.tags
    assert run_tags["registered_model"] == f"chat-ft:{info['version']}"


def test_registered_model_holds_the_checkpoint_unchanged(registered, registry, tiny_llama_dir, tmp_path):
    import mlflow

    from chatft.model_source import find_model_dir

    info, _ = registered
    with tracking_uri(registry["uri"]):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["model_uri"], dst_path=str(tmp_path)))
    checkpoint = find_model_dir(local)  # what score.py does with AZUREML_MODEL_DIR
    for original in tiny_llama_dir.iterdir():
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
            model = mlflow.pyfunc.load_model(registered[0]["model_uri"])
        reply = model.predict(request)
    finally:
        sys.modules.pop("score", None)
    assert set(reply) == {"output"} and isinstance(reply["output"], str)


def test_failed_quality_gate_refuses_registration(snapshot, registry, tiny_llama_dir, tmp_path):
    gate = {"passed": False, "reason": "tuned perplexity 14.0 > 1 × base perplexity 12.5 = 12.5"}
    before = len(registry["client"].search_model_versions("name='chat-ft'"))
    result, _ = run_register(snapshot, registry, tiny_llama_dir, upstream(tmp_path, gate), tmp_path / "info")
    assert result.returncode != 0
    assert "quality gate failed: tuned perplexity 14.0 > 1" in result.stderr
    assert "not registered" in result.stderr
    assert not (tmp_path / "info" / "model_info.json").exists()
    assert len(registry["client"].search_model_versions("name='chat-ft'")) == before


# ---- input checks, in-process (they all run before MLflow is imported) -------------------------------------------


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("register_model_under_test", COMPONENT / "register_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("gate", "expected"),
    [
        ({"passed": "false", "reason": "x"}, '"passed" must be true or false'),
        ({"reason": "x"}, '"passed" must be true or false'),
        ({"passed": False}, "quality gate failed: no reason given"),
    ],
)
def test_quality_gate_must_say_passed(script, tmp_path, gate, expected):
    with pytest.raises(script.RegistrationError, match=expected):
        script.check_quality_gate(str(write_json(tmp_path, "quality_gate.json", gate)))


def test_quality_gate_folder_without_the_file_is_an_error(script, tmp_path):
    with pytest.raises(script.RegistrationError, match="quality_gate.json: not found"):
        script.check_quality_gate(str(tmp_path))


def test_no_gate_means_not_checked(script):
    assert script.check_quality_gate(None) is None


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
