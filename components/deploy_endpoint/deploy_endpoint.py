"""Roll a registered model out to a chat endpoint that runs ``score.py``, blue/green, locally or on Azure ML.

Both targets follow the same steps, the ones an Azure ML managed endpoint is built for:

1. create or update the endpoint under its stable name (idempotent; its live traffic is kept as it is);
2. if the deployment taking traffic already serves this model version (and ``force`` is off), smoke-test it and
   stop: nothing is created or restarted;
3. otherwise deploy the version as the slot that takes no traffic (``blue`` or ``green``) and smoke-test that
   slot with real chat requests (``SMOKE_REQUESTS``: each must get HTTP 200 and a non-blank ``output``);
4. a failed start or smoke test removes the new slot, leaves traffic where it was and fails the step with the
   reason; a passed one moves 100% of traffic to the new slot, then removes the old slot.

target=local: the model is downloaded to ``$CHATFT_HOME/endpoints/<name>/models/<version>/``, each slot is an
azureml-inference-server-http process on a free loopback port (``serve_local.py``), and a small router on
``127.0.0.1:<port>`` is the endpoint's stable URL; ``endpoints/<name>/endpoint.json`` is the traffic map they
follow (``chatft.local_server`` explains the layout). Processes outlive this step; ``make stop`` / ``make
teardown`` end them.

target=azure: a key-auth ``ManagedOnlineEndpoint`` and one ``ManagedOnlineDeployment`` per slot (environment
``chatft-inference``, code = ``score.py`` + ``serving.json`` + ``chatft``, instance type/count from
infra/compute.json via the pipeline; concurrency, request timeout and the server's workers/threads from
serving.json). During a swap both slots run, so the subscription needs quota for twice the instances. Tested offline
against a recording fake of ``MLClient`` (tests/components/test_deploy_endpoint.py), never against Azure itself.

Writes ``endpoint_info/endpoint_info.json``: target, url, traffic, deployment_name, previous_deployment, model
name/version, reused, smoke_test_outputs (and local pids/ports).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatft.errors import ChatftError
from chatft.local_server import (
    LAUNCHER,
    MAP_FILE,
    ROUTER_MODULE,
    is_our_server,
    live_deployment,
    read_map,
    stop_server,
    write_map,
)
from chatft.serving.settings import load_serving_settings, server_environment

HERE = Path(__file__).resolve().parent
SPEC = HERE / "component.yml"
SCORE_SCRIPT = "score.py"
# Server settings (workers, threads, batching, Azure's concurrency and timeout per request), checked by score.py.
SERVING_FILE = "serving.json"
INFERENCE_ENVIRONMENT = "azureml:chatft-inference:3"
SLOTS = ("blue", "green")
# Azure ML's rule for endpoint names; locally it also keeps the name safe as a folder name.
ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
STARTUP_TIMEOUT_S = 300  # model load in the worker: ~5 s for SmolLM2 on 2 cores; a 3.8B model on CPU takes minutes
ROUTER_STARTUP_TIMEOUT_S = 30
SMOKE_TIMEOUT_S = 120
# Real chat requests in the seed's shape and with its sampling (temperature 0.7): its question, then a multi-turn
# conversation with a system message. Short, so a smoke test costs seconds.
SMOKE_REQUESTS = (
    {
        "input_data": {
            "input_string": [{"role": "user", "content": "How do I restart my router?"}],
            "parameters": {"temperature": 0.7, "max_new_tokens": 32},
        }
    },
    {
        "input_data": {
            "input_string": [
                {"role": "system", "content": "You are a helpful support assistant."},
                {"role": "user", "content": "My internet keeps dropping."},
                {"role": "assistant", "content": "Does it happen at a particular time of day?"},
                {"role": "user", "content": "Every evening. What should I check first?"},
            ],
            "parameters": {"temperature": 0.7, "max_new_tokens": 16},
        }
    },
)
# A sampled answer can be empty by chance (an end-of-turn token drawn first: ~0.2% of answers of a random tiny test
# model); a model that answers empty this many times in a row does not generate.
SMOKE_ATTEMPTS = 3


class DeployError(ChatftError, RuntimeError):
    """The deployment failed or cannot start; the message says what, where and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC, description=__doc__.split("\n\n")[0]).parse_args(argv)


def read_model_info(folder: str | Path) -> dict:
    path = Path(folder) / "model_info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeployError(f"{path}: not found; register_model writes it") from None
    missing = [key for key in ("name", "version", "model_uri") if not info.get(key)]
    if missing:
        raise DeployError(f"{path}: missing {', '.join(missing)}")
    if info.get("quality_gate") == "failed":
        raise DeployError(
            f"{info['name']}:{info['version']} failed its quality gate ({info.get('quality_gate_reason')}) and is "
            "not deployed. The endpoint keeps what it serves."
        )
    return info


def serving_settings() -> dict:
    """serving.json beside this script, checked by chatft.serving.settings (which owns its keys and their relations)."""
    try:
        return load_serving_settings(HERE / SERVING_FILE)
    except ValueError as err:
        raise DeployError(str(err)) from None


PROBES = ("readiness", "liveness")
PROBE_KEYS = ("initial_delay", "period", "timeout", "success_threshold", "failure_threshold")


def probe_settings(path: Path | None = None) -> dict:
    """serving.json's "probes" as the SDK's ``ProbeSettings`` ({"readiness": ..., "liveness": ...}), after checking
    that neither probe gives up on a model still loading (the arithmetic is in serving.json's "_notes")."""
    import json

    from azure.ai.ml.entities import ProbeSettings

    path = path or HERE / SERVING_FILE
    raw = json.loads(path.read_text(encoding="utf-8")).get("probes")
    where = f"{path}: probes"
    if not isinstance(raw, dict) or set(raw) != {"model_load_worst_case_s", *PROBES}:
        raise DeployError(f"{where} must be an object with model_load_worst_case_s, readiness and liveness")
    worst = raw["model_load_worst_case_s"]
    if not isinstance(worst, int) or isinstance(worst, bool) or worst < 1:
        raise DeployError(f"{where}.model_load_worst_case_s must be a whole number of seconds >= 1, got {worst!r}")
    for probe in PROBES:
        values = raw[probe]
        if not isinstance(values, dict) or set(values) != set(PROBE_KEYS):
            raise DeployError(f"{where}.{probe} needs exactly {', '.join(PROBE_KEYS)} (seconds / counts)")
        for key, value in values.items():
            lowest = 0 if key == "initial_delay" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
                raise DeployError(f"{where}.{probe}.{key} must be a whole number >= {lowest}, got {value!r}")
        if values["timeout"] >= values["period"]:
            raise DeployError(f"{where}.{probe}.timeout must be shorter than its period")
    readiness, liveness = raw["readiness"], raw["liveness"]
    if liveness["initial_delay"] < worst:
        raise DeployError(
            f"{where}.liveness.initial_delay is under model_load_worst_case_s: a loading model would be restarted"
        )
    if readiness["initial_delay"] + readiness["failure_threshold"] * readiness["period"] < worst:
        raise DeployError(
            f"{where}.readiness gives up before model_load_worst_case_s (initial_delay + failure_threshold x period)"
        )
    if liveness["success_threshold"] != 1:
        raise DeployError(f"{where}.liveness.success_threshold must be 1 (Kubernetes allows no other value)")
    return {probe: ProbeSettings(**raw[probe]) for probe in PROBES}


def stage_code(dest: Path, with_launcher: bool) -> Path:
    """Copy what the server runs (score.py and its serving.json, chatft, optionally the launcher) into ``dest``.

    chatft is taken from wherever it imports: beside this script in a component snapshot, ``src/`` in a checkout.
    """
    spec = importlib.util.find_spec("chatft")
    if spec is None or not spec.submodule_search_locations:
        raise DeployError("package chatft not found; run from the component snapshot (additional_includes)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (SCORE_SCRIPT, SERVING_FILE, LAUNCHER) if with_launcher else (SCORE_SCRIPT, SERVING_FILE):
        shutil.copy2(HERE / name, dest / name)
    shutil.copytree(spec.submodule_search_locations[0], dest / "chatft", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def check_reply(status: int, body: str, where: str) -> str:
    """One smoke reply: its ``output`` text (maybe blank), or a DeployError quoting what came back."""
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("output"), str):
        raise DeployError(f"smoke test against {where} failed: HTTP {status}: {body[:500]}")
    return reply["output"]


def smoke_test(send, where: str) -> list[str]:
    """Every smoke request through ``send(request) -> output``; each must get a non-blank answer."""
    outputs = []
    for request in SMOKE_REQUESTS:
        for _ in range(SMOKE_ATTEMPTS):
            output = send(request)
            if output.strip():
                break
        else:
            raise DeployError(
                f"smoke test against {where} failed: the model answered with empty text {SMOKE_ATTEMPTS} times in "
                f"a row to {json.dumps(request['input_data']['input_string'][-1]['content'])}"
            )
        outputs.append(output)
    return outputs


# ---- target=local ------------------------------------------------------------------------------------------------


def healthy(port: int, timeout: float = 2.0) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def accepting(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: connections of a just-stopped server in TIME_WAIT do not block the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A port the kernel has just handed out; the slot binds it a moment later (a race lost shows as a failed start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def deploy_lock(path: Path):
    """One rollout per endpoint at a time: a second waits for the first instead of corrupting the map."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def download_model(model_info: dict, models_dir: Path) -> Path:
    """The registered model's files under ``models_dir/<version>`` (downloaded once per version)."""
    target = models_dir / str(model_info["version"])
    if (target / "MLmodel").is_file():
        return target
    import mlflow

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    uri = f"models:/{model_info['name']}/{model_info['version']}"
    print(f"downloading {uri} to {target}", flush=True)
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))
    partial.rename(target)  # atomic: an interrupted download never looks complete
    return target


def _server_env(code_dir: Path) -> dict[str, str]:
    # The step's MLflow run is not the server's business; the rest of the environment (HOME, caches) is kept.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({"AML_APP_ROOT": str(code_dir), "PYTHONUNBUFFERED": "1"})
    return env


def _spawn(command: list[str], cwd: Path, env: dict, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        # A new session: the process outlives this step and ignores signals sent to the step's process group.
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_server(code_dir: Path, model_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, str(code_dir / LAUNCHER), "--entry_script", str(code_dir / SCORE_SCRIPT)]
    command += ["--model_dir", str(model_dir), "--port", str(port)]
    # One JSON line per request beside the slot's server.log (chatft.serving.monitoring; `make monitor` reads it).
    env = {**_server_env(code_dir), "CHATFT_REQUEST_LOG": str(log_path.with_name("requests.jsonl"))}
    return _spawn(command, code_dir, env, log_path)


def start_router(endpoint_home: Path, port: int) -> subprocess.Popen:
    """The endpoint's stable URL: ``chatft.local_server`` serving 127.0.0.1:port by the traffic map."""
    code_dir = endpoint_home / "router"
    spec = importlib.util.find_spec("chatft")
    shutil.rmtree(code_dir, ignore_errors=True)
    shutil.copytree(
        spec.submodule_search_locations[0], code_dir / "chatft", ignore=shutil.ignore_patterns("__pycache__")
    )
    command = [sys.executable, "-m", ROUTER_MODULE, "--map", str(endpoint_home / MAP_FILE), "--port", str(port)]
    log_path = endpoint_home / "router.log"
    process = _spawn(command, code_dir, _server_env(code_dir), log_path)
    deadline = time.monotonic() + ROUTER_STARTUP_TIMEOUT_S
    while not accepting(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process.pid)
            raise DeployError(f"the router on 127.0.0.1:{port} did not start; see {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.1)
    return process


def _log_tail(log_path: Path, lines: int = 20) -> str:
    text = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(f"    | {line}" for line in text[-lines:])


def wait_until_healthy(process: subprocess.Popen, port: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(port, timeout=1.0):
        if process.poll() is not None:
            raise DeployError(
                f"the server exited with code {process.returncode} before it was healthy; see {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise DeployError(f"the server was not healthy after {timeout:.0f} s; see {log_path}")
        time.sleep(0.2)


def smoke_test_local(url: str, where: str, deployment: str | None = None) -> list[str]:
    """The smoke test against ``url``; with ``deployment``, also check that this deployment answered."""
    import requests

    def send(request: dict) -> str:
        try:
            response = requests.post(url, json=request, timeout=SMOKE_TIMEOUT_S)
        except requests.RequestException as err:
            raise DeployError(f"smoke test against {where} failed: {err}") from None
        output = check_reply(response.status_code, response.text, where)
        answered = response.headers.get("azureml-model-deployment")
        if deployment and answered != deployment:
            raise DeployError(f"smoke test against {where}: deployment {answered!r} answered, expected {deployment!r}")
        return output

    return smoke_test(send, where)


def _serves(slot: dict | None, model_info: dict) -> bool:
    return bool(slot) and (slot["model_name"], slot["model_version"]) == (
        model_info["name"],
        str(model_info["version"]),
    )


def retire_slot(record: dict, slot: str, endpoint_home: Path) -> None:
    """Stop a slot's server and forget it (its share of traffic too); its folder goes with it."""
    entry = record["deployments"].pop(slot, None)
    record["traffic"].pop(slot, None)
    if entry:
        stop_server(entry.get("pid"))
    shutil.rmtree(endpoint_home / slot, ignore_errors=True)


def retire_legacy_record(path: Path) -> None:
    """An endpoint recorded by the single-server version of this step (endpoints/<name>.json): stop and forget it."""
    legacy = read_map(path)
    if legacy:
        print(f"stopping the single-server endpoint recorded in {path} (pid {legacy.get('pid')})", flush=True)
        stop_server(legacy.get("pid"))
        path.unlink()


def _summary(record: dict, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict:
    entry = record["deployments"][slot]
    return {
        "endpoint_name": record["endpoint_name"],
        "url": record["url"],
        "health_url": record["health_url"],
        "port": record["router"]["port"],
        "router_pid": record["router"]["pid"],
        "traffic": dict(record["traffic"]),
        "deployment_name": slot,
        "previous_deployment": previous,
        "pid": entry["pid"],
        "slot_port": entry["port"],
        "model_name": entry["model_name"],
        "model_version": entry["model_version"],
        "model_uri": entry["model_uri"],
        "log": entry["log"],
        "startup_seconds": entry["startup_seconds"],
        "map": record["map"],
        "reused": reused,
        "smoke_test_outputs": outputs,
    }


def deploy_local(model_info: dict, endpoint_name: str, port: int, home: Path, force: bool = False) -> dict:
    endpoint_home = home / "endpoints" / endpoint_name
    map_path = endpoint_home / MAP_FILE
    with deploy_lock(endpoint_home / ".deploy.lock"):
        retire_legacy_record(home / "endpoints" / f"{endpoint_name}.json")
        record = read_map(map_path) or {"endpoint_name": endpoint_name, "deployments": {}, "traffic": {}}
        record.update({"map": str(map_path), "url": f"http://127.0.0.1:{port}/score"})
        record["health_url"] = f"http://127.0.0.1:{port}/"
        router = record.get("router") or {}
        router_ok = router.get("port") == port and is_our_server(router.get("pid")) and accepting(port)
        live = live_deployment(record)
        entry = record["deployments"].get(live)
        serving = not force and _serves(entry, model_info) and is_our_server(entry["pid"]) and healthy(entry["port"])
        if not router_ok:  # the URL's port must be ours to take before anything starts
            stop_server(router.get("pid"))
            if port_in_use(port):
                raise DeployError(f"port {port} on 127.0.0.1 is in use by another program; set deploy_endpoint.port")

        # 1. Already serving this version: check it still answers (restarting only a dead router), change nothing.
        if serving:
            if not router_ok:
                record["router"] = {"pid": start_router(endpoint_home, port).pid, "port": port}
                write_map(map_path, record)
            outputs = smoke_test_local(record["url"], f"{endpoint_name} ({record['url']})", live)
            print(
                f"kept {endpoint_name}: {live} already serves {entry['model_name']}:{entry['model_version']} "
                f"at {record['url']} (pid {entry['pid']})",
                flush=True,
            )
            return _summary(record, live, None, True, outputs)

        # 2. The new version goes to the slot taking no traffic; a leftover there (an interrupted run) goes first.
        new = next(slot for slot in SLOTS if slot != live)
        if new in record["deployments"]:
            retire_slot(record, new, endpoint_home)
            write_map(map_path, record)
        shutil.rmtree(endpoint_home / new, ignore_errors=True)
        model_dir = download_model(model_info, endpoint_home / "models")
        slot_dir = endpoint_home / new
        code_dir = stage_code(slot_dir / "code", with_launcher=True)
        slot_port, log_path = free_port(), slot_dir / "server.log"
        started = time.perf_counter()
        process = start_server(code_dir, model_dir, slot_port, log_path)
        try:
            wait_until_healthy(process, slot_port, log_path, STARTUP_TIMEOUT_S)
            startup_s = time.perf_counter() - started
            outputs = smoke_test_local(f"http://127.0.0.1:{slot_port}/score", f"deployment {new} (port {slot_port})")
        except BaseException as err:
            # 3. Rollback: the new slot goes, the map (and so the traffic) is left as it was.
            stop_server(process.pid)
            shutil.rmtree(slot_dir, ignore_errors=True)
            if isinstance(err, DeployError):
                kept = f"traffic stays {record['traffic']}" if record["traffic"] else "no traffic was routed"
                raise DeployError(f"{err}\nrolled back: deployment {new} removed; {kept}") from None
            raise
        record["deployments"][new] = {
            "pid": process.pid,
            "port": slot_port,
            "model_name": model_info["name"],
            "model_version": str(model_info["version"]),
            "model_uri": model_info["model_uri"],
            "model_dir": str(model_dir),
            "log": str(log_path),
            "startup_seconds": round(startup_s, 2),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        record["traffic"].setdefault(new, 0)
        write_map(map_path, record)  # recorded at 0% first: a crash from here on leaves nothing untracked

        if not router_ok:
            record["router"] = {"pid": start_router(endpoint_home, port).pid, "port": port}
        # 4. Swap: one atomic write; the router sends the next request to the new slot.
        previous_traffic = dict(record["traffic"])
        record["traffic"] = {new: 100, **{slot: 0 for slot in record["deployments"] if slot != new}}
        write_map(map_path, record)
        try:
            outputs += smoke_test_local(record["url"], f"{endpoint_name} ({record['url']})", new)
        except DeployError as err:
            record["traffic"] = previous_traffic
            retire_slot(record, new, endpoint_home)
            write_map(map_path, record)
            raise DeployError(f"{err}\nrolled back: traffic restored to {record['traffic']}, {new} removed") from None
        if live:
            retire_slot(record, live, endpoint_home)
            write_map(map_path, record)
        in_use = {Path(d["model_dir"]).name for d in record["deployments"].values()}
        for old in (endpoint_home / "models").iterdir():  # only served versions stay on disk
            if old.name not in in_use:
                shutil.rmtree(old, ignore_errors=True)
    print(
        f"{endpoint_name}: 100% to {new} ({model_info['name']}:{model_info['version']}, pid {process.pid}, healthy "
        f"after {startup_s:.1f} s){f'; removed {live}' if live else ''}. URL {record['url']}; smoke test replied "
        f"{outputs[0]!r}",
        flush=True,
    )
    return _summary(record, new, live, False, outputs)


# ---- target=azure ------------------------------------------------------------------------------------------------


def ml_client_from_job_env():
    """MLClient for the workspace running this job, authenticated as the compute's managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    names = {
        "subscription_id": "AZUREML_ARM_SUBSCRIPTION",
        "resource_group_name": "AZUREML_ARM_RESOURCEGROUP",
        "workspace_name": "AZUREML_ARM_WORKSPACE_NAME",
    }
    missing = [env for env in names.values() if not os.environ.get(env)]
    if missing:
        raise DeployError(
            f"{', '.join(missing)} not set: target=azure runs inside an Azure ML job, which sets them; "
            "locally use target=local"
        )
    client_id = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID")
    credential = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
    return MLClient(credential, **{key: os.environ[env] for key, env in names.items()})


def build_endpoint(endpoint_name: str, traffic: dict[str, int], identity_id: str | None = None):
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration, ManagedOnlineEndpoint

    # With content safety, the endpoint runs as the user-assigned identity that holds the Content Safety role.
    identity = (
        IdentityConfiguration(
            type="user_assigned", user_assigned_identities=[ManagedIdentityConfiguration(resource_id=identity_id)]
        )
        if identity_id
        else None
    )
    return ManagedOnlineEndpoint(
        name=endpoint_name,
        auth_mode="key",
        description="Chat endpoint for the fine-tuned model (components/deploy_endpoint/score.py)",
        traffic=dict(traffic),
        identity=identity,
    )


def build_deployment(
    endpoint_name: str,
    slot: str,
    model_info: dict,
    instance_type: str,
    instance_count: int,
    code_dir: Path,
    content_safety: dict | None = None,
):
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    serving = serving_settings()
    probes = probe_settings()
    environment_variables = {
        **server_environment(serving),
        # The server's App Insights hook reads each response's whole body to log it (response.get_data()), which
        # would run a streamed answer to its end before the first byte leaves. The data collector below keeps
        # every answer instead (azureml-inference-server-http 1.5.1, server/appinsights_client.py).
        "APP_INSIGHTS_LOG_RESPONSE_ENABLED": "false",
    }
    return ManagedOnlineDeployment(
        name=slot,
        endpoint_name=endpoint_name,
        model=f"azureml:{model_info['name']}:{model_info['version']}",
        environment=INFERENCE_ENVIRONMENT,
        code_configuration=CodeConfiguration(code=str(code_dir), scoring_script=SCORE_SCRIPT),
        instance_type=instance_type,
        instance_count=instance_count,
        # The variables serve_local.py sets for the same server locally (workers, threads).
        environment_variables=environment_variables | _content_safety_environment(content_safety),
        # Monitoring: requests, traces and score.py's per-request JSON lines go to the workspace's Application
        # Insights (infra/modules/application_insights.bicep); model inputs and outputs go to the workspace
        # storage through Azure ML's data collector (score.py collects them with azureml-ai-monitoring).
        app_insights_enabled=True,
        data_collector=data_collector(),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=serving["request_timeout_ms"],
            max_concurrent_requests_per_instance=serving["max_concurrent_requests_per_instance"],
        ),
        # The merged weights take minutes to load: probes sized for that, from serving.json.
        readiness_probe=probes["readiness"],
        liveness_probe=probes["liveness"],
        tags={"model": f"{model_info['name']}:{model_info['version']}"},
    )


def _content_safety_environment(content_safety: dict | None) -> dict[str, str]:
    """CONTENT_SAFETY_ENDPOINT (and the identity's client id) for score.py: screening on (chatft/content_safety.py)."""
    from chatft.content_safety import deployment_environment

    if not content_safety:
        return {}
    # The job runs on the CPU cluster as that same user-assigned identity (infra/main.bicep); Azure ML names its id.
    return deployment_environment(content_safety["endpoint"], os.environ.get("DEFAULT_IDENTITY_CLIENT_ID"))


def data_collector():
    """Azure ML's data collector for the deployment: the collections score.py writes (every request: rate 1.0)."""
    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    collections = {name: DeploymentCollection(enabled="true") for name in ("model_inputs", "model_outputs")}
    return DataCollector(collections=collections, sampling_rate=1.0)


def smoke_test_azure(ml_client, endpoint_name: str, deployment: str, tmp: Path) -> list[str]:
    """The smoke test, addressed to ``deployment`` itself (it may take no traffic yet)."""
    from azure.core.exceptions import HttpResponseError

    where = f"{endpoint_name}/{deployment}"
    request_file = tmp / "smoke_request.json"

    def send(request: dict) -> str:
        request_file.write_text(json.dumps(request), encoding="utf-8")
        try:
            body = ml_client.online_endpoints.invoke(
                endpoint_name=endpoint_name, deployment_name=deployment, request_file=str(request_file)
            )
        except HttpResponseError as err:
            raise DeployError(
                f"smoke test against {where} failed: HTTP {err.status_code}: {err.message}; see the logs: "
                f"az ml online-deployment get-logs -e {endpoint_name} -n {deployment}"
            ) from None
        return check_reply(200, body if isinstance(body, str) else json.dumps(body), where)

    return smoke_test(send, where)


def _azure_summary(base: dict, endpoint, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict:
    """endpoint_info.json for target=azure: ``base`` (the model and size) and the endpoint as the service reports it."""
    return {
        **base,
        "url": endpoint.scoring_uri,
        "traffic": dict(endpoint.traffic or {}),
        "deployment_name": slot,
        "previous_deployment": previous,
        "reused": reused,
        "smoke_test_outputs": outputs,
    }


def deploy_azure(
    ml_client,
    model_info: dict,
    endpoint_name: str,
    instance_type: str,
    instance_count: int,
    force: bool = False,
    content_safety: dict | None = None,
) -> dict:
    """The blue/green rollout on Azure ML (steps in the module docstring).

    ``ml_client`` is an ``azure.ai.ml.MLClient``; the tests pass a recording fake with the same methods, so this
    function only uses ``ml_client.online_endpoints`` / ``ml_client.online_deployments``.
    """
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    try:
        traffic = dict(ml_client.online_endpoints.get(endpoint_name).traffic or {})
    except ResourceNotFoundError:  # a first deployment
        traffic = {}
    live = live_deployment({"traffic": traffic})
    wanted = f"{model_info['name']}:{model_info['version']}"
    base = {"endpoint_name": endpoint_name, "model_name": model_info["name"], "model_uri": model_info["model_uri"]}
    base.update({"model_version": str(model_info["version"]), "instance_type": instance_type})
    base["instance_count"] = instance_count

    with tempfile.TemporaryDirectory(prefix="deploy_endpoint-") as tmp:
        if live and not force:
            current = ml_client.online_deployments.get(name=live, endpoint_name=endpoint_name)
            if (current.tags or {}).get("model") == wanted:
                outputs = smoke_test_azure(ml_client, endpoint_name, live, Path(tmp))
                endpoint = ml_client.online_endpoints.get(endpoint_name)
                print(f"kept {endpoint_name}: {live} already serves {wanted}", flush=True)
                return _azure_summary(base, endpoint, live, None, True, outputs)

        new = next(slot for slot in SLOTS if slot != live)
        # Create or update under the stable name; the live routing table goes with it unchanged until the swap.
        print(f"creating/updating endpoint {endpoint_name} (traffic {traffic}) ...", flush=True)
        identity = (content_safety or {}).get("identity")
        ml_client.online_endpoints.begin_create_or_update(build_endpoint(endpoint_name, traffic, identity)).result()
        code_dir = stage_code(Path(tmp) / "code", with_launcher=False)
        deployment = build_deployment(
            endpoint_name, new, model_info, instance_type, instance_count, code_dir, content_safety
        )
        print(f"creating deployment {new} ({instance_count} x {instance_type}, {wanted}) at 0% traffic ...", flush=True)
        try:
            ml_client.online_deployments.begin_create_or_update(deployment).result()
            outputs = smoke_test_azure(ml_client, endpoint_name, new, Path(tmp))
        except (DeployError, HttpResponseError) as err:
            with contextlib.suppress(ResourceNotFoundError):  # a deployment that was never created
                ml_client.online_deployments.begin_delete(name=new, endpoint_name=endpoint_name).result()
            reason = str(err) if isinstance(err, DeployError) else f"deployment {new} failed: {err.message}"
            kept = f"traffic stays {traffic}" if traffic else "no traffic was routed"
            raise DeployError(f"{reason}\nrolled back: deployment {new} deleted; {kept}") from None

    print(f"{endpoint_name}: moving 100% of traffic to {new} ...", flush=True)
    swapped = build_endpoint(endpoint_name, {new: 100}, (content_safety or {}).get("identity"))
    ml_client.online_endpoints.begin_create_or_update(swapped).result()
    for old in (slot for slot, share in traffic.items() if share > 0 and slot != new):
        print(f"deleting the previous deployment {old} ...", flush=True)
        ml_client.online_deployments.begin_delete(name=old, endpoint_name=endpoint_name).result()
    endpoint = ml_client.online_endpoints.get(endpoint_name)
    print(f"{endpoint_name}: 100% to {new}; scoring URI {endpoint.scoring_uri}", flush=True)
    return _azure_summary(base, endpoint, new, live, False, outputs)


def main(args: argparse.Namespace) -> dict:
    if not ENDPOINT_NAME.match(args.endpoint_name):
        raise DeployError(
            f"endpoint_name {args.endpoint_name!r} is invalid: 3-32 letters, digits or '-', starting with a letter "
            "and not ending with '-'"
        )
    model_info = read_model_info(args.model_info)
    content_safety = None
    if args.content_safety_endpoint:
        if args.target != "azure" or not args.endpoint_identity:
            raise DeployError(
                "content_safety_endpoint needs target=azure and endpoint_identity (infra output identityId: the "
                "identity holding the Content Safety role); locally, export CONTENT_SAFETY_ENDPOINT instead"
            )
        content_safety = {"endpoint": args.content_safety_endpoint, "identity": args.endpoint_identity}
    if args.target == "local":
        home = os.environ.get("CHATFT_HOME")
        if not home:
            raise DeployError("CHATFT_HOME is not set: the local backend sets it to the output root (e.g. outputs/)")
        info = deploy_local(model_info, args.endpoint_name, args.port, Path(home).resolve(), args.force)
    else:
        if not args.instance_type or not args.instance_count:
            raise DeployError(
                "target=azure needs instance_type and instance_count; the pipeline fills them from "
                "infra/compute.json (online_endpoint)"
            )
        info = deploy_azure(
            ml_client_from_job_env(),
            model_info,
            args.endpoint_name,
            args.instance_type,
            args.instance_count,
            args.force,
            content_safety,
        )
    info = {"target": args.target, **info}
    out = Path(args.endpoint_info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "endpoint_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


if __name__ == "__main__":
    try:
        main(parse_args())
    except DeployError as err:
        sys.exit(f"deploy_endpoint: {err}")
