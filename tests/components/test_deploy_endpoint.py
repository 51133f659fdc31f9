"""deploy_endpoint.py: the Azure path against a recording fake MLClient; the local path with real servers; the CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chatft.local_server import pid_running

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "deploy_endpoint"
MODEL_INFO = {"name": "chat-ft", "version": "3", "model_uri": "models:/chat-ft/3", "run_id": "r", "tags": {}}


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


# ---- target=azure against a recording fake -----------------------------------------------------------------------


class _Done:
    """Stands in for an LROPoller that has finished."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _RecordingOperations:
    def __init__(self, client: RecordingMLClient, kind: str):
        self.client, self.kind = client, kind

    def begin_create_or_update(self, entity):
        # Serialize with the SDK at call time, as the real client does before sending.
        self.client.calls.append((self.kind, "begin_create_or_update", entity._to_dict()))
        if self.kind == "online_deployments":
            code = Path(entity.code_configuration.code)
            self.client.code_files = sorted(str(p.relative_to(code)) for p in code.rglob("*.py"))
        else:
            self.client.endpoints[entity.name] = entity
        return _Done(entity)

    def get(self, name):
        from azure.ai.ml.entities import ManagedOnlineEndpoint
        from azure.core.exceptions import ResourceNotFoundError

        self.client.calls.append((self.kind, "get", name))
        if name not in self.client.endpoints:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        # A fresh object, as the service returns, with the read-only fields it fills in.
        stored = self.client.endpoints[name]
        return ManagedOnlineEndpoint(
            name=name,
            auth_mode=stored.auth_mode,
            traffic=dict(stored.traffic),
            scoring_uri=f"https://{name}.westeurope.inference.ml.azure.com/score",
        )

    def invoke(self, endpoint_name, request_file, deployment_name=None):
        request = json.loads(Path(request_file).read_text())
        self.client.calls.append((self.kind, "invoke", {"deployment_name": deployment_name, "request": request}))
        if isinstance(self.client.invoke_reply, Exception):
            raise self.client.invoke_reply
        return self.client.invoke_reply


class RecordingMLClient:
    """Records what deploy_azure asks of MLClient; never touches the network or a credential."""

    def __init__(self, invoke_reply: str | Exception = '{"output": "Hello!"}', existing: dict | None = None):
        self.calls: list[tuple] = []
        self.endpoints: dict = dict(existing or {})
        self.code_files: list[str] = []
        self.invoke_reply = invoke_reply
        self.online_endpoints = _RecordingOperations(self, "online_endpoints")
        self.online_deployments = _RecordingOperations(self, "online_deployments")

    def sequence(self) -> list[tuple[str, str]]:
        return [(kind, method) for kind, method, _ in self.calls]


def test_azure_deploy_call_sequence_and_objects(deploy, compute):
    client = RecordingMLClient()
    info = deploy.deploy_azure(client, MODEL_INFO, "chat-ft", compute["instance_type"], compute["instance_count"])

    assert client.sequence() == [
        ("online_endpoints", "get"),  # does it exist (to keep its traffic)?
        ("online_endpoints", "begin_create_or_update"),
        ("online_deployments", "begin_create_or_update"),
        ("online_endpoints", "invoke"),  # smoke test of the deployment before it gets traffic
        ("online_endpoints", "begin_create_or_update"),  # traffic 100%
        ("online_endpoints", "get"),
    ]
    endpoint, deployment, smoke, routed = (client.calls[i][2] for i in (1, 2, 3, 4))
    assert endpoint["name"] == "chat-ft" and endpoint["auth_mode"] == "key" and endpoint["traffic"] == {}
    assert deployment["instance_type"] == compute["instance_type"] == "Standard_NC6s_v3"
    assert deployment["instance_count"] == compute["instance_count"] == 1
    assert deployment["type"] == "managed"
    assert deployment["endpoint_name"] == "chat-ft" and deployment["name"] == deploy.DEPLOYMENT_NAME
    assert deployment["model"] == "azureml:chat-ft:3"
    assert deployment["environment"] == "azureml:chatft-inference:1"
    assert deployment["code_configuration"]["scoring_script"] == "score.py"
    assert "score.py" in client.code_files and "chatft/model_source.py" in client.code_files
    assert "deploy_endpoint.py" not in client.code_files and "serve_local.py" not in client.code_files
    assert smoke["deployment_name"] == deploy.DEPLOYMENT_NAME
    assert routed["traffic"] == {deploy.DEPLOYMENT_NAME: 100}
    assert info["traffic"] == {deploy.DEPLOYMENT_NAME: 100}
    assert info["url"] == "https://chat-ft.westeurope.inference.ml.azure.com/score"
    assert info["smoke_test_output"] == "Hello!"


def test_azure_smoke_request_passes_the_scoring_contract(deploy):
    score = _load(COMPONENT / "score.py", "score_for_deploy_test")
    client = RecordingMLClient()
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", "Standard_NC6s_v3", 1)
    request = next(payload for _, method, payload in client.calls if method == "invoke")["request"]
    messages, params = score.parse_request(json.dumps(request))
    assert messages[-1]["role"] == "user" and params["do_sample"] is False


def test_azure_redeploy_keeps_live_traffic_until_the_swap(deploy):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    live = ManagedOnlineEndpoint(name="chat-ft", auth_mode="key", traffic={"main": 100})
    client = RecordingMLClient(existing={"chat-ft": live})
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", "Standard_NC6s_v3", 1)
    first_update = client.calls[1][2]
    assert first_update["traffic"] == {"main": 100}  # not an empty routing table


def _http_error(status: int, message: str):
    from azure.core.exceptions import HttpResponseError

    error = HttpResponseError(message=message)
    error.status_code = status
    return error


@pytest.mark.parametrize(
    "invoke_reply",
    [
        '{"message": "An unexpected error occurred in scoring script."}',  # the body of a 500
        _http_error(424, "model init failed"),  # what the SDK raises for a non-2xx answer
    ],
)
def test_azure_failed_smoke_test_routes_no_traffic(deploy, invoke_reply):
    client = RecordingMLClient(invoke_reply=invoke_reply)
    with pytest.raises(deploy.DeployError, match="smoke test against chat-ft/main failed"):
        deploy.deploy_azure(client, MODEL_INFO, "chat-ft", "Standard_NC6s_v3", 1)
    updates = [payload for kind, method, payload in client.calls if method == "begin_create_or_update"]
    assert all(update.get("traffic", {}) == {} for update in updates if "auth_mode" in update)


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
    ("argv", "environment", "expected"),
    [
        (["--endpoint_name", "1bad"], {}, "endpoint_name '1bad' is invalid"),
        (["--target", "azure"], {}, "target=azure needs instance_type and instance_count"),
        ([], {"CHATFT_HOME": None}, "CHATFT_HOME is not set"),
    ],
)
def test_main_refuses_bad_settings(deploy, tmp_path, monkeypatch, argv, environment, expected):
    for name, value in environment.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    defaults = {"--endpoint_name": "chat-ft", "--target": "local", "--port": "8890"}
    defaults.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    args = deploy.parse_args(
        ["--model_info", str(write_model_info(tmp_path / "mi", MODEL_INFO)), "--endpoint_info", str(tmp_path / "out")]
        + [item for pair in defaults.items() for item in pair]
    )
    with pytest.raises(deploy.DeployError, match=expected):
        deploy.main(args)


def test_main_reports_a_missing_model_info(deploy, tmp_path):
    args = deploy.parse_args(
        [
            "--model_info",
            str(tmp_path),
            "--endpoint_name",
            "chat-ft",
            "--target",
            "local",
            "--port",
            "8890",
            "--endpoint_info",
            str(tmp_path / "out"),
        ]
    )
    with pytest.raises(deploy.DeployError, match="model_info.json: not found"):
        deploy.main(args)


# ---- target=local: real registry, real servers -------------------------------------------------------------------


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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(pid, signal.SIGKILL)


class LocalWorld:
    """A tmp output root with an MLflow registry, snapshots of both components, and helpers that run them."""

    def __init__(self, root: Path, tiny_model: Path):
        from mlflow.tracking import MlflowClient

        self.root, self.tiny_model = root, tiny_model
        self.home = root / "outputs"
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment("deploy-test", artifact_location=(root / "art").as_uri())
        self.register_snapshot = snapshot_component(REPO / "components" / "register_model", root / "snap" / "reg")
        self.deploy_snapshot = snapshot_component(COMPONENT, root / "snap" / "deploy")
        self.port = free_port()
        self.latest: Path | None = None  # model_info folder of the newest registered version
        self.started: list[int] = []  # every server PID a test saw, stopped at teardown whatever happened

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

    def register(self) -> Path:
        """Run register_model.py on the tiny model (as the pipeline does); return its model_info folder."""
        upstream = self.root / "upstream" / "v1"
        for folder, file, data in (
            ("eval", "eval_report.json", {"metrics": {"tuned": {"perplexity": 9.0}}}),
            ("split", "split_info.json", {"fingerprint": "abc"}),
        ):
            (upstream / folder).mkdir(parents=True)
            (upstream / folder / file).write_text(json.dumps(data))
        command = [
            sys.executable,
            "register_model.py",
            "--tuned_model",
            str(self.tiny_model),
            "--eval_report",
            str(upstream / "eval"),
            "--split_info",
            str(upstream / "split"),
            "--model_name",
            "chat-ft",
            "--base_model_name",
            "tiny",
            "--model_info",
            str(upstream / "info"),
        ]
        result = subprocess.run(command, cwd=self.register_snapshot, env=self.env(), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        self.latest = upstream / "info"
        return self.latest

    def new_version(self) -> Path:
        """Another registry version of the same logged model: a re-registration without re-logging 100s of MB."""
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        old = json.loads((self.latest / "model_info.json").read_text())
        source = self.client.get_model_version(old["name"], old["version"]).source
        # MLflow 3.15 resolves a models:/m-... source through the global tracking URI, not this client's.
        with _use_tracking_uri(self.uri):
            version = self.client.create_model_version(old["name"], source, run_id=old["run_id"]).version
        info = {**old, "version": str(version), "model_uri": f"models:/{old['name']}/{version}"}
        self.latest = self.root / "upstream" / f"v{version}" / "info"
        return write_model_info(self.latest, info)

    def deploy(self, model_info: Path) -> tuple[dict, float]:
        out = self.root / "endpoint_info" / str(time.monotonic_ns())
        command = [
            sys.executable,
            "deploy_endpoint.py",
            "--model_info",
            str(model_info),
            "--endpoint_name",
            "chat-ft",
            "--target",
            "local",
            "--port",
            str(self.port),
            "--endpoint_info",
            str(out),
        ]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=self.deploy_snapshot, env=self.env(), capture_output=True, text=True)
        seconds = time.perf_counter() - started
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads((out / "endpoint_info.json").read_text()), seconds

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "pipelines.endpoint", "--home", str(self.home), *args]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        return subprocess.run(command, cwd=REPO, env=env, input=stdin, capture_output=True, text=True, timeout=120)

    def record(self) -> dict | None:
        path = self.home / "endpoints" / "chat-ft.json"
        return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_llama_dir):
    world = LocalWorld(tmp_path_factory.mktemp("deploy_local"), tiny_llama_dir)
    world.register()
    yield world
    for pid in world.started + ([world.record()["pid"]] if world.record() else []):
        kill_group(pid)


@pytest.mark.slow
def test_local_deploy_is_idempotent_and_swaps_versions(world):
    import requests

    first, seconds = world.deploy(world.latest)
    world.started.append(first["pid"])
    print(f"first deploy: {seconds:.1f} s (server healthy after {first['startup_seconds']} s)")
    assert first["target"] == "local" and first["reused"] is False
    assert first["url"] == f"http://127.0.0.1:{world.port}/score"
    assert first["traffic"] == {"main": 100} and isinstance(first["smoke_test_output"], str)
    assert pid_running(first["pid"])  # outlived the step that started it
    record = world.record()
    assert record["pid"] == first["pid"] and record["port"] == world.port
    assert record["model_version"] == first["model_version"]
    reply = requests.post(first["url"], json={"input_data": {"input_string": [{"role": "user", "content": "Hi"}]}})
    assert reply.status_code == 200 and isinstance(reply.json()["output"], str)

    again, seconds = world.deploy(world.latest)
    print(f"no-change re-deploy: {seconds:.2f} s")
    assert again["reused"] is True and again["pid"] == first["pid"]
    assert seconds < 10  # no download, no restart (~0.5 s here; generous for a loaded CI box)

    second, seconds = world.deploy(world.new_version())
    print(f"deploy of a new version: {seconds:.1f} s")
    world.started.append(second["pid"])
    assert int(second["model_version"]) == int(first["model_version"]) + 1
    assert second["reused"] is False and second["pid"] != first["pid"]
    assert not pid_running(first["pid"])  # the old version's server was stopped
    assert world.record()["model_version"] == second["model_version"]
    models = world.home / "endpoints" / "chat-ft" / "models"
    assert [p.name for p in models.iterdir()] == [second["model_version"]]  # the old download was removed


@pytest.mark.slow
def test_endpoint_cli_ask_chat_status_stop(world):
    import requests

    info, _ = world.deploy(world.latest)  # already served if the lifecycle test ran: kept
    world.started.append(info["pid"])

    status = world.cli("status")
    assert status.returncode == 0 and "chat-ft: healthy" in status.stdout, status.stderr

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

    stop = world.cli("stop")
    assert stop.returncode == 0 and f"stopped chat-ft (pid {info['pid']})" in stop.stdout
    assert not pid_running(info["pid"])
    assert world.record() is None

    after = world.cli("status")
    assert after.returncode == 1 and "no endpoint recorded" in after.stderr
