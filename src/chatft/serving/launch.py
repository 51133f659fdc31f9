"""Serving ``score.py`` on this machine: a code folder staged like a deployment's, its server started and awaited.

A code folder holds ``score.py``, its ``serving.json``, the launcher ``serve_local.py`` (azureml-inference-server-http
bound to 127.0.0.1) and ``chatft``. The server runs as its own process group (gunicorn master and workers) so that
one signal stops all of it. Used by the local deployment's slots, the tests and the endpoint benchmark.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from chatft.errors import ChatftError
from chatft.processes import LOOPBACK, free_port, http_ok, spawn_detached, stop_process_group, wait_until

LAUNCHER = "serve_local.py"
SCORE_SCRIPT = "score.py"
SERVING_FILE = "serving.json"


def stage_code(source: Path, dest: Path, with_launcher: bool) -> Path:
    """Copy what the server runs (``source``'s score.py and serving.json, optionally the launcher, and chatft).

    chatft is taken from wherever it imports: beside the script in a component snapshot, ``src/`` in a checkout.
    """
    spec = importlib.util.find_spec("chatft")
    if spec is None or not spec.submodule_search_locations:
        raise ChatftError("package chatft not found; run from the component snapshot (additional_includes)")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (SCORE_SCRIPT, SERVING_FILE, LAUNCHER) if with_launcher else (SCORE_SCRIPT, SERVING_FILE):
        shutil.copy2(source / name, dest / name)
    copy_chatft(dest)
    return dest


def copy_chatft(dest: Path) -> None:
    """The imported chatft package, copied to ``dest/chatft`` (no caches)."""
    origin = importlib.util.find_spec("chatft").submodule_search_locations[0]
    shutil.copytree(origin, dest / "chatft", ignore=shutil.ignore_patterns("__pycache__"))


def server_env(code_dir: Path, request_log: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A server's environment: ``base`` (default: ours) without MLflow's run, plus the app root and request log."""
    # The caller's MLflow run is not the server's business; the rest (HOME, caches) is kept.
    env = {key: value for key, value in (os.environ if base is None else base).items() if not key.startswith("MLFLOW_")}
    env.update({"AML_APP_ROOT": str(code_dir), "PYTHONUNBUFFERED": "1"})
    if request_log is not None:  # one JSON line per request (chatft.serving.monitoring; `make monitor` reads it)
        env["CHATFT_REQUEST_LOG"] = str(request_log)
    return env


def start_server(code_dir: Path, model_dir: Path, port: int, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """The launcher in ``code_dir`` serving ``model_dir`` on the loopback ``port``, detached; its output to the log."""
    command = [sys.executable, str(code_dir / LAUNCHER), "--entry_script", str(code_dir / SCORE_SCRIPT)]
    command += ["--model_dir", str(Path(model_dir).resolve()), "--port", str(port)]
    return spawn_detached(command, code_dir, env, log_path)


def wait_healthy(process: subprocess.Popen, port: int, log_path: Path, timeout_s: float) -> float:
    """Wait until GET / answers 200 (the model is loaded); the seconds it took. ServerStartError otherwise."""
    health = f"http://{LOOPBACK}:{port}/"
    return wait_until(lambda: http_ok(health, timeout=1.0), process, "the server", log_path, timeout_s)


@contextlib.contextmanager
def running_server(
    model_dir: str | os.PathLike,
    log_path: str | os.PathLike,
    code_dir: str | os.PathLike,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[dict]:
    """Serve ``model_dir`` with ``code_dir``'s score.py on a loopback port until the block ends.

    Yields ``{"port", "url", "log", "requests_log", "pid", "startup_s"}``. ``code_dir`` needs score.py, serving.json
    and the launcher, and ``chatft`` importable (beside them, as deployed, or through PYTHONPATH in ``env``).
    """
    code_dir, log_path, port = Path(code_dir), Path(log_path), port or free_port()
    # The request log goes beside the server log unless the caller names one.
    request_log = Path((env or os.environ).get("CHATFT_REQUEST_LOG") or log_path.with_name("requests.jsonl"))
    started = time.perf_counter()
    process = start_server(code_dir, Path(model_dir), port, log_path, server_env(code_dir, request_log, env))
    try:
        wait_healthy(process, port, log_path, timeout_s)
        yield {
            "port": port,
            "url": f"http://{LOOPBACK}:{port}/score",
            "log": log_path,
            "requests_log": request_log,
            "pid": process.pid,
            "startup_s": time.perf_counter() - started,
        }
    finally:
        stop_process_group(process)
