"""deploy_endpoint.py: its arguments and settings checks, and target=local with a real registry, real servers and the
real router: a swap under load, an idempotent re-deploy, rollbacks, and `pipelines.endpoint` on the result.

target=azure, against a simulation of the Azure ML REST API, is in test_deploy_azure.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatft.local_server import pid_running
from chatft.processes import free_port
from tests.helpers.components import load_script, snapshot_component
from tests.helpers.servers import kill_group

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "deploy_endpoint"
MODEL_INFO = {"name": "chat-ft", "version": "3", "model_uri": "models:/chat-ft/3", "run_id": "r", "tags": {}}
SEED_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "How do I restart my router?"}],
        "parameters": {"temperature": 0.7, "max_new_tokens": 128},
    }
}


@pytest.fixture(scope="module")
def deploy():
    return load_script("deploy_endpoint_under_test", COMPONENT / "deploy_endpoint.py")


def write_model_info(folder: Path, info: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


# ---- arguments and settings ---------------------------------------------------------------------------------------


def test_content_safety_needs_azure_and_the_identity(deploy, tmp_path):
    info = write_model_info(tmp_path / "info", MODEL_INFO)
    argv = ["--model_info", str(info), "--endpoint_info", str(tmp_path / "out")]
    args = deploy.parse_args([*argv, "--target", "azure", "--content_safety_endpoint", "https://cs.example/"])
    with pytest.raises(deploy.DeployError, match="needs target=azure and endpoint_identity"):
        deploy.main(args)


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
