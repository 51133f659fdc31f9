"""deploy_endpoint.py: the blue/green rollout on Azure against the simulated Azure ML REST API; locally with real
registry, real servers and the real router; the CLI.

The Azure half is a simulation: a real MLClient over a fake transport answering in the REST spec's shapes
(tests/helpers/azure_endpoints.py and azure_transport.py say what it can and cannot show); the local half runs the
same rollout logic on real processes: a swap under load, an idempotent re-deploy and a rollback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from chatft.local_server import pid_running
from chatft.serving.settings import server_environment
from tests.helpers.azure_endpoints import simulated_endpoints, story
from tests.helpers.components import snapshot_component

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "deploy_endpoint"
MODEL_INFO = {"name": "chat-ft", "version": "3", "model_uri": "models:/chat-ft/3", "run_id": "r", "tags": {}}
MODEL_INFO_4 = {**MODEL_INFO, "version": "4", "model_uri": "models:/chat-ft/4"}
SEED_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "How do I restart my router?"}],
        "parameters": {"temperature": 0.7, "max_new_tokens": 128},
    }
}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deploy():
    return _load(COMPONENT / "deploy_endpoint.py", "deploy_endpoint_under_test")


@pytest.fixture(scope="module")
def compute():
    return json.loads((REPO / "infra" / "compute.json").read_text())["online_endpoint"]


def write_model_info(folder: Path, info: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


# ---- target=azure against the simulated Azure ML REST API -----------------------------------------------------
# A real MLClient sends through tests/helpers/azure_endpoints.py: the SDK's serializers, pollers and deserializers run;
# the answers follow the REST spec's examples. ``story`` lists what changed the endpoint: PUTs, DELETEs, scoring calls.


@pytest.fixture
def endpoint_sim(monkeypatch):
    yield from simulated_endpoints(monkeypatch)


def put_bodies(sim, what: str) -> list[dict]:
    """The bodies the SDK PUT for ``what``: "endpoint" or a deployment name."""
    pattern = r"/onlineEndpoints/chat-ft$" if what == "endpoint" else rf"/onlineEndpoints/chat-ft/deployments/{what}$"
    return sim.puts(pattern)


def write_yaml(path: Path, entity) -> None:
    """An SDK entity as the YAML `az ml ... create -f` reads. A deployment's ``dump(path)`` writes it; an endpoint's
    ignores the path and returns the dict (PLATFORM_NOTES)."""
    returned = entity.dump(path)
    if not path.exists():
        path.write_text(yaml.safe_dump(json.loads(json.dumps(returned, default=str))))


def uploaded_code(sim) -> set[str]:
    """The files of the deployment's code snapshot, as uploaded to the workspace's storage."""
    return {name.split("/code/", 1)[1] for name in sim.blobs if "/code/" in name}


def test_azure_first_deploy_creates_blue_smoke_tests_it_then_routes_to_it(deploy, compute, endpoint_sim):
    sim = endpoint_sim
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], compute["instance_count"])

    assert story(sim) == [
        "PUT chat-ft",  # created, routing nothing (a first GET found no endpoint: 404)
        "PUT chat-ft/deployments/blue",  # blue, at 0% traffic
        "score blue",  # smoke tests, addressed to blue itself
        "score blue",
        "PUT chat-ft",  # traffic 100% to blue
    ]
    assert sim.sent("GET", r"/onlineEndpoints/chat-ft$")[0].status == 404
    created, routed = put_bodies(sim, "endpoint")
    assert created["properties"]["authMode"] == "Key" and created["properties"]["traffic"] == {}
    assert routed["properties"]["traffic"] == {"blue": 100}
    (deployment,) = put_bodies(sim, "blue")
    properties = deployment["properties"]
    assert properties["endpointComputeType"] == "Managed"
    assert properties["instanceType"] == compute["instance_type"]
    assert deployment["sku"]["capacity"] == compute["instance_count"] == 1
    assert properties["model"].endswith("/models/chat-ft/versions/3") and deployment["tags"] == {"model": "chat-ft:3"}
    assert properties["environmentId"].endswith("/environments/chatft-inference/versions/3")
    assert properties["codeConfiguration"]["scoringScript"] == "score.py"
    assert {"score.py", "serving.json", "chatft/model_source.py"} <= uploaded_code(sim)
    assert not {"deploy_endpoint.py", "serve_local.py", "component.yml"} & uploaded_code(sim)
    assert info["url"] == "https://chat-ft.eastus2.inference.ml.azure.com/score"  # the service's scoringUri
    assert info["traffic"] == {"blue": 100} and info["deployment_name"] == "blue"
    assert info["previous_deployment"] is None and info["reused"] is False
    assert info["smoke_test_outputs"] == ["Hello!", "Hello!"]
    # The key the SDK fetched authorised the smoke requests.
    assert {r.headers["Authorization"] for r in sim.sent("POST", r"/score$")} == {f"Bearer {sim.key}"}


def test_azure_objects_load_back_with_the_sdk_schemas(deploy, compute, endpoint_sim, tmp_path):
    """What the service stored reads back as SDK entities, and dumps to YAML that `az ml ... create -f` accepts."""
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    client = endpoint_sim.client()
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    endpoint = client.online_endpoints.get("chat-ft")
    deployment = client.online_deployments.get(name="blue", endpoint_name="chat-ft")
    deployment.code_configuration.code = str(tmp_path)  # the staged folder is gone with the step
    write_yaml(tmp_path / "endpoint.yml", endpoint)
    write_yaml(tmp_path / "deployment.yml", deployment)
    assert load_online_endpoint(tmp_path / "endpoint.yml").traffic == {"blue": 100}
    reloaded = load_online_deployment(tmp_path / "deployment.yml")
    assert reloaded.instance_type == compute["instance_type"] and reloaded.request_settings.request_timeout_ms > 0
    assert reloaded.environment_variables["WORKER_COUNT"]


def test_azure_deployment_probes_wait_out_the_model_load_and_load_back_with_the_sdk(
    deploy, compute, endpoint_sim, tmp_path
):
    """Issue 10, defect 7: the deployment set no probes, though the merged Phi-3 weights take minutes to load."""
    from azure.ai.ml import load_online_deployment

    client = endpoint_sim.client()
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    probes = json.loads((COMPONENT / "serving.json").read_text())["probes"]
    # On the wire: the REST shape of the spec's example (ISO 8601 durations).
    (sent,) = put_bodies(endpoint_sim, "blue")
    assert sent["properties"]["readinessProbe"]["failureThreshold"] == probes["readiness"]["failure_threshold"]
    assert sent["properties"]["livenessProbe"]["initialDelay"].startswith("PT")
    # Read back from the service and through the SDK's YAML schema.
    deployment = client.online_deployments.get(name="blue", endpoint_name="chat-ft")
    deployment.code_configuration.code = str(tmp_path)
    write_yaml(tmp_path / "deployment.yml", deployment)
    reloaded = load_online_deployment(tmp_path / "deployment.yml")

    worst = probes["model_load_worst_case_s"]
    for name in ("readiness", "liveness"):
        probe = getattr(reloaded, f"{name}_probe")
        assert {key: getattr(probe, key) for key in probes[name]} == probes[name], name
    # Neither probe gives up on a model that is still loading.
    assert reloaded.liveness_probe.initial_delay >= worst
    readiness = reloaded.readiness_probe
    assert readiness.initial_delay + readiness.failure_threshold * readiness.period >= worst
    assert worst >= 120, "loading 7.6 GB of merged weights takes minutes"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"liveness": {"initial_delay": 60}}, "a loading model would be restarted"),
        ({"readiness": {"failure_threshold": 3}}, "readiness gives up before model_load_worst_case_s"),
        ({"readiness": {"timeout": 30}}, "readiness.timeout must be shorter than its period"),
        ({"liveness": {"success_threshold": 2}}, "must be 1"),
        ({"liveness": {"period": "30"}}, "liveness.period must be a whole number >= 1"),
    ],
)
def test_probe_settings_that_would_kill_a_loading_model_are_refused(deploy, tmp_path, change, message):
    raw = json.loads((COMPONENT / "serving.json").read_text())
    for probe, values in change.items():
        raw["probes"][probe].update(values)
    (tmp_path / "serving.json").write_text(json.dumps(raw))
    with pytest.raises(deploy.DeployError, match=message):
        deploy.probe_settings(tmp_path / "serving.json")


def test_azure_smoke_requests_pass_the_scoring_contract(deploy, compute, endpoint_sim):
    score = _load(COMPONENT / "score.py", "score_for_deploy_test")
    deploy.deploy_azure(endpoint_sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    requests = [body for _, body in endpoint_sim.scored()]
    assert requests == list(deploy.SMOKE_REQUESTS)
    for request in requests:
        messages, params = score.parse_request(json.dumps(request))
        assert messages[-1]["role"] == "user" and params["temperature"] == 0.7  # sampled, as the seed's request
    assert requests[0]["input_data"]["input_string"] == SEED_REQUEST["input_data"]["input_string"]


def test_azure_one_blank_sampled_answer_is_asked_again(deploy, compute, endpoint_sim):
    sim = endpoint_sim
    sim.scoring_replies["blue"] = ['{"output": ""}', '{"output": "Unplug it."}', '{"output": "Check the cable."}']
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    assert story(sim).count("score blue") == 3
    assert info["smoke_test_outputs"] == ["Unplug it.", "Check the cable."]


def test_azure_new_version_goes_blue_to_green_then_blue_is_deleted(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "blue", "chat-ft:3")
    client = sim.client()
    info = deploy.deploy_azure(client, MODEL_INFO_4, "chat-ft", compute["instance_type"], 1)

    assert story(sim) == [
        "PUT chat-ft",  # updated, still 100% blue (blue serves chat-ft:3, not 4)
        "PUT chat-ft/deployments/green",
        "score green",
        "score green",
        "PUT chat-ft",  # 100% green
        "DELETE chat-ft/deployments/blue",
    ]
    kept, swapped = put_bodies(sim, "endpoint")
    assert kept["properties"]["traffic"] == {"blue": 100}  # an update never sends an empty routing table
    assert swapped["properties"]["traffic"] == {"green": 100}
    assert sim.get("onlineEndpoints/chat-ft/deployments", "blue") is None
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is not None
    assert info["deployment_name"] == "green" and info["previous_deployment"] == "blue"
    assert info["traffic"] == {"green": 100}

    # The next version goes back to blue.
    again = deploy.deploy_azure(client, {**MODEL_INFO, "version": "5"}, "chat-ft", compute["instance_type"], 1)
    assert again["deployment_name"] == "blue" and again["previous_deployment"] == "green"
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is None


def test_azure_redeploy_of_the_live_version_only_smoke_tests_it(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "green", "chat-ft:3")
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    assert story(sim) == ["score green", "score green"]
    assert sim.sent("GET", r"/onlineEndpoints/chat-ft/deployments/green$"), "it asked what green serves"
    assert info["reused"] is True and info["deployment_name"] == "green" and info["traffic"] == {"green": 100}


def test_azure_force_redeploys_the_live_version_to_the_other_slot(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "green", "chat-ft:3")
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1, force=True)
    assert not sim.sent("GET", r"/onlineEndpoints/chat-ft/deployments/green$")
    assert info["deployment_name"] == "blue" and info["previous_deployment"] == "green" and not info["reused"]


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        ("reply", r"smoke test against chat-ft/green failed: HTTP 200: \{\"message\""),
        ("empty", "smoke test against chat-ft/green failed: the model answered with empty text 3 times in a row"),
        ("http", "(?s)smoke test against chat-ft/green failed: HTTP 424: .*model init failed.*; see the logs"),
        ("create", "deployment green failed: .*container crashed"),
    ],
)
def test_azure_failed_smoke_test_deletes_the_new_slot_and_keeps_traffic(deploy, compute, endpoint_sim, fail, expected):
    sim = endpoint_sim.with_live("chat-ft", "blue", "chat-ft:3")
    if fail == "reply":
        sim.scoring_replies["green"] = ['{"message": "An unexpected error occurred in scoring script."}']
    elif fail == "empty":
        sim.scoring_replies["green"] = ['{"output": "  "}']
    elif fail == "http":
        sim.scoring_replies["green"] = [(424, '{"message": "model init failed"}')]
    else:
        sim.failing_deployments["green"] = "container crashed: exit code 137"
    with pytest.raises(deploy.DeployError, match=expected) as raised:
        deploy.deploy_azure(sim.client(), MODEL_INFO_4, "chat-ft", compute["instance_type"], 1)
    assert "rolled back: deployment green deleted; traffic stays {'blue': 100}" in str(raised.value)
    assert [body["properties"]["traffic"] for body in put_bodies(sim, "endpoint")] == [{"blue": 100}]  # never green
    assert story(sim)[-1] == "DELETE chat-ft/deployments/green"
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is None
    assert sim.get("onlineEndpoints/chat-ft/deployments", "blue") is not None  # the live slot untouched


def test_azure_serving_settings_reach_the_deployment(deploy, tmp_path):
    serving = json.loads((COMPONENT / "serving.json").read_text())
    deployment = deploy.build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path)
    limits = deployment.request_settings
    assert limits.max_concurrent_requests_per_instance == serving["max_concurrent_requests_per_instance"]
    assert limits.request_timeout_ms == serving["request_timeout_ms"]
    # The same worker/thread variables as the local server gets, so both serve alike.
    assert deployment.environment_variables == {
        **server_environment(serving),
        "APP_INSIGHTS_LOG_RESPONSE_ENABLED": "false",  # else the server's App Insights hook buffers every stream
    }
    assert deployment.environment_variables["WORKER_COUNT"] == str(serving["worker_count"])


IDENTITY = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-x-compute"


def test_content_safety_reaches_the_deployment_and_the_endpoint_runs_as_its_identity(deploy, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "client-id-of-the-compute-identity")
    screening = {"endpoint": "https://cs-x.cognitiveservices.azure.com/", "identity": IDENTITY}
    deployment = deploy.build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path, screening)
    assert deployment.environment_variables["CONTENT_SAFETY_ENDPOINT"] == screening["endpoint"]
    assert deployment.environment_variables["CONTENT_SAFETY_CLIENT_ID"] == "client-id-of-the-compute-identity"
    endpoint = deploy.build_endpoint("chat-ft", {"blue": 100}, IDENTITY)
    assert endpoint.identity.type == "user_assigned"
    assert endpoint.identity.user_assigned_identities[0].resource_id == IDENTITY
    plain = deploy.build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path)
    assert "CONTENT_SAFETY_ENDPOINT" not in plain.environment_variables
    assert deploy.build_endpoint("chat-ft", {}).identity is None


def test_content_safety_needs_azure_and_the_identity(deploy, tmp_path):
    info = write_model_info(tmp_path / "info", MODEL_INFO)
    argv = ["--model_info", str(info), "--endpoint_info", str(tmp_path / "out")]
    args = deploy.parse_args([*argv, "--target", "azure", "--content_safety_endpoint", "https://cs.example/"])
    with pytest.raises(deploy.DeployError, match="needs target=azure and endpoint_identity"):
        deploy.main(args)


def test_azure_deployment_collects_inputs_outputs_and_enables_app_insights(deploy, tmp_path):
    deployment = deploy.build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path)
    assert deployment.app_insights_enabled is True
    collector = deployment.data_collector
    assert collector.sampling_rate == 1.0
    assert {name: c.enabled for name, c in collector.collections.items()} == {
        "model_inputs": "true",
        "model_outputs": "true",
    }
    # What goes over the wire (the SDK's own serializer): the names chatft.serving.app's Collector(name=...) writes to.
    rest = deployment._to_rest_object(location="westeurope").properties
    assert rest.app_insights_enabled is True
    modes = {name: c.data_collection_mode.lower() for name, c in rest.data_collector.collections.items()}
    assert modes == {"model_inputs": "enabled", "model_outputs": "enabled"}
    app = (REPO / "src" / "chatft" / "serving" / "app.py").read_text()
    assert 'Collector(name="model_inputs"' in app and 'Collector(name="model_outputs"' in app


def test_a_bad_serving_json_stops_the_deployment(deploy, tmp_path, monkeypatch):
    for name in ("score.py", "serve_local.py"):
        shutil.copy2(COMPONENT / name, tmp_path / name)
    (tmp_path / "serving.json").write_text('{"worker_count": 1}')
    monkeypatch.setattr(deploy, "HERE", tmp_path)
    with pytest.raises(deploy.DeployError, match=r"serving.json: unknown key\(s\) -, missing key\(s\)"):
        deploy.build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path)


def test_azure_client_needs_the_job_environment(deploy, monkeypatch):
    for name in ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(deploy.DeployError, match="AZUREML_ARM_SUBSCRIPTION.*not set"):
        deploy.ml_client_from_job_env()


def test_azure_client_uses_the_compute_identity(deploy, monkeypatch):
    from azure.identity import ManagedIdentityCredential

    monkeypatch.setenv("AZUREML_ARM_SUBSCRIPTION", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("AZUREML_ARM_RESOURCEGROUP", "rg-chatft")
    monkeypatch.setenv("AZUREML_ARM_WORKSPACE_NAME", "mlw-chatft")
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
    client = deploy.ml_client_from_job_env()  # constructing makes no call (PLATFORM_NOTES)
    assert client.workspace_name == "mlw-chatft" and client.resource_group_name == "rg-chatft"
    assert isinstance(client._credential, ManagedIdentityCredential)


@pytest.mark.parametrize(
    ("argv", "environment", "info", "expected"),
    [
        (["--endpoint_name", "1bad"], {}, MODEL_INFO, "endpoint_name '1bad' is invalid"),
        (["--target", "azure"], {}, MODEL_INFO, "target=azure needs instance_type and instance_count"),
        ([], {"CHATFT_HOME": None}, MODEL_INFO, "CHATFT_HOME is not set"),
        (
            [],
            {},
            {**MODEL_INFO, "quality_gate": "failed", "quality_gate_reason": "14.0 > 12.5"},
            r"chat-ft:3 failed its quality gate \(14.0 > 12.5\) and is not deployed",
        ),
    ],
)
def test_main_refuses_bad_settings(deploy, tmp_path, monkeypatch, argv, environment, info, expected):
    for name, value in environment.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    defaults = {"--endpoint_name": "chat-ft", "--target": "local", "--port": "8890"}
    defaults.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    args = deploy.parse_args(
        ["--model_info", str(write_model_info(tmp_path / "mi", info)), "--endpoint_info", str(tmp_path / "out")]
        + [item for pair in defaults.items() for item in pair]
    )
    with pytest.raises(deploy.DeployError, match=expected):
        deploy.main(args)


def test_main_reports_a_missing_model_info(deploy, tmp_path):
    args = deploy.parse_args(["--model_info", str(tmp_path), "--endpoint_info", str(tmp_path / "out")])
    with pytest.raises(deploy.DeployError, match="model_info.json: not found"):
        deploy.main(args)


# ---- target=local: real registry, real servers, the real router -------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)


def processes_running_from(folder: Path) -> list[int]:
    """PIDs whose command line mentions ``folder``: a slot's server runs its launcher from the slot's code dir."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if str(folder).encode() in cmdline.read_bytes() and pid_running(int(cmdline.parent.name)):
                found.append(int(cmdline.parent.name))
    return found


class LocalWorld:
    """A tmp output root with an MLflow registry, snapshots of both components, and helpers that run them."""

    def __init__(self, root: Path, tiny_model: Path):
        from mlflow.tracking import MlflowClient

        self.root, self.tiny_model = root, tiny_model
        self.home = root / "outputs"
        self.endpoint_home = self.home / "endpoints" / "chat-ft"
        self.home.mkdir(parents=True)
        self.uri = f"sqlite:///{self.home / 'mlflow.db'}"  # where the local backend keeps it
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment("deploy-test", artifact_location=(root / "art").as_uri())
        self.register_snapshot = snapshot_component(REPO / "components" / "register_model", root / "snap" / "reg")
        self.deploy_snapshot = snapshot_component(COMPONENT, root / "snap" / "deploy")
        self.port = free_port()
        self.latest: Path | None = None  # model_info folder of the newest registered version
        self.serving_info: Path | None = None  # model_info folder of the last successful deployment
        self.seen: set[int] = set()  # every endpoint PID a test saw, killed at teardown whatever happened

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
        run_id = self.client.create_run(self.experiment_id).info.run_id
        env.update(
            {
                "MLFLOW_TRACKING_URI": self.uri,
                "MLFLOW_RUN_ID": run_id,
                "CHATFT_HOME": str(self.home),
                "HOME": str(self.root),
            }
        )
        return env

    def register(self, model: Path, label: str) -> Path:
        """Run register_model.py on ``model`` (gate passed, as the pipeline does); return its model_info folder."""
        upstream = self.root / "upstream" / label
        for folder, file, data in (
            ("eval", "eval_report.json", {"metrics": {"tuned": {"perplexity": 9.0}}}),
            ("split", "split_info.json", {"fingerprint": "abc"}),
            ("gate", "quality_gate.json", {"passed": True, "reason": "9.0 <= 10.0"}),
        ):
            (upstream / folder).mkdir(parents=True)
            (upstream / folder / file).write_text(json.dumps(data))
        command = [sys.executable, "register_model.py", "--tuned_model", str(model)]
        command += ["--eval_report", str(upstream / "eval"), "--split_info", str(upstream / "split")]
        command += ["--quality_gate", str(upstream / "gate"), "--base_model_name", "tiny"]
        command += ["--model_info", str(upstream / "info")]
        result = subprocess.run(command, cwd=self.register_snapshot, env=self.env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        self.latest = upstream / "info"
        return self.latest

    def new_version(self) -> Path:
        """Another registry version of the same logged model: a re-registration without re-logging the weights."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        old = json.loads((self.latest / "model_info.json").read_text())
        source = self.client.get_model_version(old["name"], old["version"]).source
        # MLflow 3.15 resolves a models:/m-... source through the global tracking URI, not this client's.
        with _use_tracking_uri(self.uri):
            version = self.client.create_model_version(old["name"], source, run_id=old["run_id"]).version
        info = {**old, "version": str(version), "model_uri": f"models:/{old['name']}/{version}"}
        self.latest = self.root / "upstream" / f"v{version}" / "info"
        return write_model_info(self.latest, info)

    def deploy(self, model_info: Path, *extra: str, ok: bool = True) -> tuple[dict | None, subprocess.CompletedProcess]:
        out = self.root / "endpoint_info" / str(time.monotonic_ns())
        command = [sys.executable, "deploy_endpoint.py", "--model_info", str(model_info), "--endpoint_name"]
        command += ["chat-ft", "--target", "local", "--port", str(self.port), "--endpoint_info", str(out), *extra]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=self.deploy_snapshot, env=self.env(), capture_output=True, text=True)
        result.seconds = time.perf_counter() - started
        self.remember()
        if not ok:
            assert result.returncode != 0, result.stdout
            return None, result
        assert result.returncode == 0, result.stdout + result.stderr
        self.serving_info = model_info
        return json.loads((out / "endpoint_info.json").read_text()), result

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipelines.endpoint", "--home", str(self.home), *args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(command, cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=120)

    def record(self) -> dict | None:
        path = self.endpoint_home / "endpoint.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def remember(self) -> None:
        record = self.record() or {}
        self.seen |= {(record.get("router") or {}).get("pid")} | {
            d["pid"] for d in record.get("deployments", {}).values()
        }
        self.seen.discard(None)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir):
    world = LocalWorld(tmp_path_factory.mktemp("deploy_local"), tiny_llama_dir)
    world.register(tiny_llama_dir, "v1")
    yield world
    world.remember()
    for pid in world.seen:
        kill_group(pid)


def post(url: str, request: dict = SEED_REQUEST, **headers):
    import requests

    return requests.post(url, json=request, headers=headers, timeout=60)


@pytest.mark.slow
def test_local_first_deploy_then_an_idempotent_redeploy(world):
    first, result = world.deploy(world.latest)
    print(f"first deploy: {result.seconds:.1f} s (slot healthy after {first['startup_seconds']} s)")
    assert first["target"] == "local" and first["reused"] is False
    assert first["url"] == f"http://127.0.0.1:{world.port}/score"  # the router: the stable URL
    assert first["deployment_name"] == "blue" and first["previous_deployment"] is None
    assert first["traffic"] == {"blue": 100}
    assert len(first["smoke_test_outputs"]) == 4  # 2 requests to blue, 2 through the router
    assert all(o.strip() for o in first["smoke_test_outputs"])
    record = world.record()
    assert record["traffic"] == {"blue": 100} and set(record["deployments"]) == {"blue"}
    assert record["router"]["port"] == world.port and record["deployments"]["blue"]["port"] != world.port
    assert pid_running(first["pid"]) and pid_running(first["router_pid"])  # outlived the step
    # The seed's exact request through the endpoint URL gets a generated answer, from blue.
    reply = post(first["url"])
    assert reply.status_code == 200 and reply.json()["output"].strip()
    assert reply.headers["azureml-model-deployment"] == "blue"

    again, result = world.deploy(world.latest)
    print(f"no-change re-deploy: {result.seconds:.2f} s")
    assert again["reused"] is True and again["deployment_name"] == "blue"
    assert (again["pid"], again["router_pid"]) == (first["pid"], first["router_pid"])  # nothing restarted
    assert world.record()["deployments"].keys() == {"blue"} and not (world.endpoint_home / "green").exists()
    assert "kept chat-ft: blue already serves" in result.stdout


@pytest.mark.slow
def test_local_new_version_swaps_blue_to_green_without_dropping_a_request(world):
    before = world.record()
    blue_pid, router_pid = before["deployments"]["blue"]["pid"], before["router"]["pid"]
    url = before["url"]
    answered: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic():  # a client calling the stable URL all through the rollout
        while not stop.is_set():
            reply = post(url, {"input_data": {"input_string": [{"role": "user", "content": "Hi"}],
                                              "parameters": {"max_new_tokens": 1}}})  # fmt: skip
            answered.append((reply.status_code, reply.headers.get("azureml-model-deployment")))

    client = threading.Thread(target=traffic)
    client.start()
    try:
        second, result = world.deploy(world.new_version())
        time.sleep(0.5)  # a few requests after the swap
    finally:
        stop.set()
        client.join(timeout=60)
    print(f"deploy of a new version: {result.seconds:.1f} s; {len(answered)} requests during it")
    assert second["deployment_name"] == "green" and second["previous_deployment"] == "blue"
    assert second["traffic"] == {"green": 100} and second["reused"] is False
    assert second["url"] == url and second["router_pid"] == router_pid  # same URL, same router
    assert not pid_running(blue_pid)  # the old slot was stopped ...
    assert not (world.endpoint_home / "blue").exists()  # ... and removed
    record = world.record()
    assert set(record["deployments"]) == {"green"} and record["deployments"]["green"]["model_version"] == "2"
    assert [p.name for p in (world.endpoint_home / "models").iterdir()] == ["2"]  # the old download is gone
    assert {status for status, _ in answered} == {200}  # no request failed during the swap
    served = [slot for _, slot in answered]
    assert served[0] == "blue" and served[-1] == "green" and served == sorted(served)  # blue, then only green
    assert post(url).headers["azureml-model-deployment"] == "green"


@pytest.mark.slow
def test_local_force_redeploys_the_same_version_to_the_other_slot(world):
    green_pid = world.record()["deployments"]["green"]["pid"]
    forced, _ = world.deploy(world.latest, "--force", "true")
    assert forced["deployment_name"] == "blue" and forced["previous_deployment"] == "green"
    assert forced["model_version"] == "2" and forced["reused"] is False
    assert not pid_running(green_pid) and set(world.record()["deployments"]) == {"blue"}


@pytest.mark.slow
def test_local_failed_smoke_test_rolls_back(world, tmp_path):
    before = world.record()
    # A model that starts and answers its warm-up ("Hi": 71 prompt tokens + 1) but has too short a context for the
    # smoke test's question (84 + 32 tokens): a broken config.json, refused with a 400 by the endpoint.
    broken = shutil.copytree(world.tiny_model, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 100}))
    _, result = world.deploy(world.register(broken, "broken"), ok=False)

    assert "deploy_endpoint: smoke test against deployment green" in result.stderr, result.stderr
    assert "failed: HTTP 400" in result.stderr and "context of 100" in result.stderr
    assert "rolled back: deployment green removed; traffic stays {'blue': 100}" in result.stderr
    after = world.record()
    assert after == before  # traffic, slots, pids, router: all as they were
    assert not (world.endpoint_home / "green").exists()
    assert processes_running_from(world.endpoint_home / "green") == []  # the new server was stopped
    reply = post(after["url"])
    assert reply.status_code == 200 and reply.headers["azureml-model-deployment"] == "blue"


@pytest.mark.slow
def test_local_slot_that_never_starts_rolls_back(world, tmp_path):
    before = world.record()
    broken = shutil.copytree(world.tiny_model, tmp_path / "no_weights")
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    _, result = world.deploy(world.register(broken, "no_weights"), ok=False)
    assert "deploy_endpoint: the server exited with code" in result.stderr, result.stderr
    assert "rolled back: deployment green removed; traffic stays {'blue': 100}" in result.stderr
    assert world.record() == before and processes_running_from(world.endpoint_home / "green") == []


@pytest.mark.slow
def test_endpoint_cli_status_ask_chat_stop_teardown(world):
    import requests

    info, _ = world.deploy(world.serving_info or world.latest)  # what the tests before left, or a first deploy
    status = world.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"chat-ft: {info['url']}" in status.stdout and "router pid" in status.stdout
    assert f"{info['deployment_name']:<6} 100%" in status.stdout and "healthy" in status.stdout

    ask = world.cli("ask", "How do I reset my router?", "--temperature", "0", "--max_new_tokens", "4")
    assert ask.returncode == 0, ask.stderr
    greedy = {
        "input_data": {
            "input_string": [{"role": "user", "content": "How do I reset my router?"}],
            "parameters": {"do_sample": False, "max_new_tokens": 4},
        }
    }
    assert ask.stdout == requests.post(info["url"], json=greedy, timeout=60).json()["output"] + "\n"

    refused = world.cli("ask", "hi", "--temperature", "9")
    assert refused.returncode == 1 and "HTTP 400" in refused.stderr and "temperature" in refused.stderr

    chat = world.cli("chat", "--max_new_tokens", "3", stdin="hello\n/reset\nagain\n/exit\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("bot> ") == 2 and "(conversation cleared)" in chat.stdout

    record = world.record()
    stop = world.cli("stop")
    assert stop.returncode == 0 and f"chat-ft: router stopped (pid {record['router']['pid']})" in stop.stdout
    assert not pid_running(record["router"]["pid"]) and not pid_running(info["pid"])
    assert world.record() is None
    after = world.cli("status")
    assert after.returncode == 1 and "no endpoint recorded" in after.stderr

    # Teardown: endpoint gone, model kept; then with --delete-model, the model too.
    world.deploy(world.serving_info)
    down = world.cli("teardown")
    assert down.returncode == 0, down.stderr
    assert not world.endpoint_home.exists() and "the registered model stays" in down.stdout
    assert world.client.search_model_versions("name='chat-ft'")
    gone = world.cli("teardown", "--delete-model", "--name", "chat-ft")
    assert gone.returncode == 0, gone.stderr
    assert "deleted the registered model chat-ft" in gone.stdout
    assert world.client.search_registered_models() == []
