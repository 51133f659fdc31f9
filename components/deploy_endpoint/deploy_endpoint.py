"""Deploy a registered model behind a chat endpoint that runs ``score.py``: a local server or an Azure ML endpoint.

target=local: download ``models:/<name>/<version>`` under ``$CHATFT_HOME/endpoints/<endpoint_name>/``, start
azureml-inference-server-http on 127.0.0.1 (``serve_local.py``) as a detached process that outlives this step,
wait until it is healthy, smoke-test it with a chat request, and record it in
``$CHATFT_HOME/endpoints/<endpoint_name>.json``. A re-run keeps a healthy server that already serves the same
model version on the same port; otherwise the recorded server is stopped and replaced.

target=azure: create or update a key-auth managed online endpoint and its one deployment (environment
``chatft-inference``, code = ``score.py`` + ``chatft``, instance type/count from the pipeline, which reads them from
infra/compute.json), smoke-test the deployment, then route 100% of traffic to it.

Writes ``endpoint_info/endpoint_info.json``: target, url, model name/version, deployment name, traffic, and the
pid and port for a local server.
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

from chatft.local_server import LAUNCHER, is_our_server, stop_server

HERE = Path(__file__).resolve().parent
SCORE_SCRIPT = "score.py"
INFERENCE_ENVIRONMENT = "azureml:chatft-inference:1"
# One deployment, updated in place: a re-deploy never needs quota for a second GPU instance (blue/green would).
DEPLOYMENT_NAME = "main"
# Azure ML's rule for endpoint names; locally it also keeps the name safe as a file name.
ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
STARTUP_TIMEOUT_S = 300  # model load in the worker: ~5 s for SmolLM2 on 2 cores; a 3.8B model on CPU takes minutes
# Greedy and short: proves the whole chat path works without waiting for a long answer.
SMOKE_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "Say hello in one short sentence."}],
        "parameters": {"max_new_tokens": 8, "do_sample": False},
    }
}


class DeployError(RuntimeError):
    """The deployment failed or cannot start; the message says what, where and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_info", required=True, help="folder with model_info.json from register_model")
    parser.add_argument("--endpoint_name", required=True, help="endpoint name (Azure: unique in the region)")
    parser.add_argument("--target", required=True, choices=["local", "azure"], help="where the endpoint runs")
    parser.add_argument("--port", type=int, required=True, help="local: port on 127.0.0.1")
    parser.add_argument("--instance_type", help="azure: VM size of the deployment (from infra/compute.json)")
    parser.add_argument("--instance_count", type=int, help="azure: instances of the deployment (from compute.json)")
    parser.add_argument("--endpoint_info", required=True, help="output folder for endpoint_info.json")
    return parser.parse_args(argv)


def read_model_info(folder: str | Path) -> dict:
    path = Path(folder) / "model_info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeployError(f"{path}: not found; register_model writes it") from None
    missing = [key for key in ("name", "version", "model_uri") if not info.get(key)]
    if missing:
        raise DeployError(f"{path}: missing {', '.join(missing)}")
    return info


def stage_code(dest: Path, with_launcher: bool) -> Path:
    """Copy what the server runs (score.py, chatft, optionally the launcher) into ``dest``; return it.

    chatft is taken from wherever it imports: beside this script in a component snapshot, ``src/`` in a checkout.
    """
    spec = importlib.util.find_spec("chatft")
    if spec is None or not spec.submodule_search_locations:
        raise DeployError("package chatft not found; run from the component snapshot (additional_includes)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (SCORE_SCRIPT, LAUNCHER) if with_launcher else (SCORE_SCRIPT,):
        shutil.copy2(HERE / name, dest / name)
    shutil.copytree(spec.submodule_search_locations[0], dest / "chatft", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# ---- target=local ------------------------------------------------------------------------------------------------


def healthy(port: int, timeout: float = 2.0) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: connections of a just-stopped server in TIME_WAIT do not block the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


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


def start_server(code_dir: Path, model_dir: Path, port: int, log_path: Path) -> subprocess.Popen:
    # The step's MLflow run is not the server's business; the rest of the environment (HOME, caches) is kept.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({"AML_APP_ROOT": str(code_dir), "PYTHONUNBUFFERED": "1"})
    command = [
        sys.executable,
        str(code_dir / LAUNCHER),
        "--entry_script",
        str(code_dir / SCORE_SCRIPT),
        "--model_dir",
        str(model_dir),
        "--port",
        str(port),
    ]
    with log_path.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        # A new session: the server outlives this step and ignores signals sent to the step's process group.
        return subprocess.Popen(
            command,
            cwd=code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def check_reply(status: int, body: str, where: str) -> str:
    """The smoke test's verdict: the chat reply text, or a DeployError quoting what came back."""
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("output"), str):
        raise DeployError(f"smoke test against {where} failed: HTTP {status}: {body[:500]}")
    return reply["output"]


def smoke_test_local(port: int) -> str:
    import requests

    url = f"http://127.0.0.1:{port}/score"
    response = requests.post(url, json=SMOKE_REQUEST, timeout=120)
    return check_reply(response.status_code, response.text, url)


def write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def deploy_local(model_info: dict, endpoint_name: str, port: int, home: Path) -> dict:
    endpoints = home / "endpoints"
    record_path = endpoints / f"{endpoint_name}.json"
    state_dir = endpoints / endpoint_name
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    wanted = (model_info["name"], str(model_info["version"]), port)

    serving = record and (record["model_name"], record["model_version"], record["port"]) == wanted
    if serving and is_our_server(record["pid"]) and healthy(port):
        reply = smoke_test_local(port)
        print(
            f"kept the running server (pid {record['pid']}): {record['url']} already serves "
            f"{record['model_name']}:{record['model_version']}",
            flush=True,
        )
        return {**record, "reused": True, "smoke_test_output": reply}

    # Fetch the new model while the old server (if any) still answers, then swap.
    model_dir = download_model(model_info, state_dir / "models")
    if record:
        print(f"stopping the server recorded in {record_path} (pid {record['pid']})", flush=True)
        stop_server(record["pid"])
        record_path.unlink()
    if port_in_use(port):
        raise DeployError(f"port {port} on 127.0.0.1 is in use by another program; set deploy_endpoint.port")

    code_dir = stage_code(state_dir / "code", with_launcher=True)
    log_path = state_dir / "server.log"
    started = time.perf_counter()
    process = start_server(code_dir, model_dir, port, log_path)
    try:
        wait_until_healthy(process, port, log_path, STARTUP_TIMEOUT_S)
        startup_s = time.perf_counter() - started
        reply = smoke_test_local(port)
    except BaseException:
        stop_server(process.pid)
        raise
    record = {
        "endpoint_name": endpoint_name,
        "pid": process.pid,
        "port": port,
        "url": f"http://127.0.0.1:{port}/score",
        "health_url": f"http://127.0.0.1:{port}/",
        "model_name": model_info["name"],
        "model_version": str(model_info["version"]),
        "model_uri": model_info["model_uri"],
        "model_dir": str(model_dir),
        "deployment_name": DEPLOYMENT_NAME,
        "traffic": {DEPLOYMENT_NAME: 100},
        "log": str(log_path),
        "startup_seconds": round(startup_s, 2),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomically(record_path, record)
    for old in (state_dir / "models").iterdir():  # only the served version stays on disk
        if old != model_dir:
            shutil.rmtree(old, ignore_errors=True)
    print(
        f"serving {record['model_name']}:{record['model_version']} at {record['url']} (pid {process.pid}, "
        f"healthy after {startup_s:.1f} s); smoke test replied {reply!r}",
        flush=True,
    )
    return {**record, "reused": False, "smoke_test_output": reply}


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


def build_endpoint(endpoint_name: str, model_info: dict):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    return ManagedOnlineEndpoint(
        name=endpoint_name,
        auth_mode="key",
        description="Chat endpoint for the fine-tuned model (components/deploy_endpoint/score.py)",
        tags={"model": f"{model_info['name']}:{model_info['version']}"},
    )


def build_deployment(endpoint_name: str, model_info: dict, instance_type: str, instance_count: int, code_dir: Path):
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    return ManagedOnlineDeployment(
        name=DEPLOYMENT_NAME,
        endpoint_name=endpoint_name,
        model=f"azureml:{model_info['name']}:{model_info['version']}",
        environment=INFERENCE_ENVIRONMENT,
        code_configuration=CodeConfiguration(code=str(code_dir), scoring_script=SCORE_SCRIPT),
        instance_type=instance_type,
        instance_count=instance_count,
        # One generation at a time per GPU; 1024 new tokens of a 3.8B model take well under 90 s on a V100.
        request_settings=OnlineRequestSettings(request_timeout_ms=90_000, max_concurrent_requests_per_instance=1),
        tags={"model": f"{model_info['name']}:{model_info['version']}"},
    )


def deploy_azure(ml_client, model_info: dict, endpoint_name: str, instance_type: str, instance_count: int) -> dict:
    """Create/update the endpoint and its deployment, smoke-test the deployment, then give it 100% of traffic.

    ``ml_client`` is an ``azure.ai.ml.MLClient``; tests pass a recording fake with the same methods, so this
    function must only use ``ml_client.online_endpoints`` / ``ml_client.online_deployments``.
    """
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    endpoint = build_endpoint(endpoint_name, model_info)
    with contextlib.suppress(ResourceNotFoundError):  # a first deployment: nothing to keep
        # An update without traffic would send an empty routing table: keep the live one until the swap.
        endpoint.traffic = dict(ml_client.online_endpoints.get(endpoint_name).traffic or {})
    with tempfile.TemporaryDirectory(prefix="deploy_endpoint-") as tmp:
        code_dir = stage_code(Path(tmp) / "code", with_launcher=False)
        deployment = build_deployment(endpoint_name, model_info, instance_type, instance_count, code_dir)
        print(f"creating/updating endpoint {endpoint_name} ...", flush=True)
        ml_client.online_endpoints.begin_create_or_update(endpoint).result()
        print(f"creating/updating deployment {DEPLOYMENT_NAME} ({instance_count} x {instance_type}) ...", flush=True)
        ml_client.online_deployments.begin_create_or_update(deployment).result()
        request_file = Path(tmp) / "smoke_request.json"
        request_file.write_text(json.dumps(SMOKE_REQUEST), encoding="utf-8")
        # Addressed to the deployment itself: a broken deployment is caught before it receives any traffic.
        try:
            body = ml_client.online_endpoints.invoke(
                endpoint_name=endpoint_name, deployment_name=DEPLOYMENT_NAME, request_file=str(request_file)
            )
        except HttpResponseError as err:
            raise DeployError(
                f"smoke test against {endpoint_name}/{DEPLOYMENT_NAME} failed: HTTP {err.status_code}: {err.message}; "
                f"see the deployment logs: az ml online-deployment get-logs -e {endpoint_name} -n {DEPLOYMENT_NAME}"
            ) from None
    reply = check_reply(200, body if isinstance(body, str) else json.dumps(body), f"{endpoint_name}/{DEPLOYMENT_NAME}")
    endpoint.traffic = {DEPLOYMENT_NAME: 100}
    ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    live = ml_client.online_endpoints.get(endpoint_name)
    print(f"{endpoint_name}: 100% to {DEPLOYMENT_NAME}; scoring URI {live.scoring_uri}", flush=True)
    return {
        "endpoint_name": endpoint_name,
        "url": live.scoring_uri,
        "model_name": model_info["name"],
        "model_version": str(model_info["version"]),
        "model_uri": model_info["model_uri"],
        "deployment_name": DEPLOYMENT_NAME,
        "traffic": dict(live.traffic or {}),
        "instance_type": instance_type,
        "instance_count": instance_count,
        "smoke_test_output": reply,
    }


def main(args: argparse.Namespace) -> dict:
    if not ENDPOINT_NAME.match(args.endpoint_name):
        raise DeployError(
            f"endpoint_name {args.endpoint_name!r} is invalid: 3-32 letters, digits or '-', starting with a letter "
            "and not ending with '-'"
        )
    model_info = read_model_info(args.model_info)
    if args.target == "local":
        home = os.environ.get("CHATFT_HOME")
        if not home:
            raise DeployError("CHATFT_HOME is not set: the local backend sets it to the output root (e.g. outputs/)")
        info = deploy_local(model_info, args.endpoint_name, args.port, Path(home).resolve())
    else:
        if not args.instance_type or not args.instance_count:
            raise DeployError(
                "target=azure needs instance_type and instance_count; the pipeline fills them from "
                "infra/compute.json (online_endpoint)"
            )
        info = deploy_azure(
            ml_client_from_job_env(), model_info, args.endpoint_name, args.instance_type, args.instance_count
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
