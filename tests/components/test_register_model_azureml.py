"""register_model.py against a simulation of Azure ML's tracking service: a real mlflow server behind a proxy that
answers 404 to the routes Azure ML does not serve (logged models, aliases; tests/helpers/azureml_tracking_proxy.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatft import registry as champion
from tests.helpers import registration
from tests.helpers.registration import pipeline_runs, register_ok, tracking_uri

# Fixtures shared with the other register_model tests.
snapshot, tuned_model = registration.snapshot, registration.tuned_model

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
def test_champion_falls_back_to_a_tag_that_moves_on_the_simulated_azure_service(registered_on_azure, azure_registry):
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
    assert (local / "artifacts" / "MODEL_CARD.md").is_file() and (local / "code" / "chatft").is_dir()
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert "python_function" in mlmodel["flavors"] and mlmodel["run_id"] == step
