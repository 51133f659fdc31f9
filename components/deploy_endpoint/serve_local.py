"""Run azureml-inference-server-http on 127.0.0.1 only (its ``azmlinfsrv`` CLI binds 0.0.0.0, with no host flag).

The server reads the bind address from ``amlserver.DEFAULT_HOST`` when it starts, so setting that constant before
``amlserver.run()`` is all it takes. The process becomes the gunicorn master; the scoring worker is its child.
Worker count and threads come from ``serving.json`` beside ``score.py`` (``server_environment`` turns them into the
variables the server reads; an Azure deployment sets the same variables).

    python serve_local.py --entry_script score.py --model_dir MODEL_DIR --port 8890

``running_server`` starts this launcher as a child process and waits until it is healthy (tests, the benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOOPBACK = "127.0.0.1"
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entry_script", required=True, help="scoring script with init() and run()")
    parser.add_argument("--model_dir", required=True, help="folder exposed to the script as AZUREML_MODEL_DIR")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    return parser.parse_args(argv)


def server_environment(settings: dict) -> dict[str, str]:
    """Environment variables that make azureml-inference-server-http serve with ``settings`` (from serving.json).

    WORKER_COUNT is the server's own; it passes no thread count to gunicorn, but gunicorn reads extra flags from
    GUNICORN_CMD_ARGS, and more than one thread switches its sync worker to the threaded one (gthread).
    """
    return {"WORKER_COUNT": str(settings["worker_count"]), "GUNICORN_CMD_ARGS": f"--threads {settings['threads']}"}


def main(args: argparse.Namespace) -> None:
    from azureml_inference_server_http import amlserver

    # score.py owns serving.json and its checks; both sit beside the entry script.
    sys.path.insert(0, str(Path(args.entry_script).resolve().parent))
    from score import load_serving_settings

    os.environ.update(server_environment(load_serving_settings()))
    amlserver.DEFAULT_HOST = LOOPBACK
    # amlserver.run() parses sys.argv itself, with the azmlinfsrv flags.
    sys.argv = [
        "azmlinfsrv",
        "--entry_script",
        args.entry_script,
        "--model_dir",
        args.model_dir,
        "--port",
        str(args.port),
    ]
    amlserver.run()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(
    model_dir: str | os.PathLike,
    log_path: str | os.PathLike,
    code_dir: str | os.PathLike = HERE,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[dict]:
    """Serve ``model_dir`` with ``code_dir``'s score.py on a loopback port until the block ends.

    Yields ``{"port", "url", "log", "requests_log", "pid", "startup_s"}``. ``code_dir`` needs score.py,
    serving.json and this file, and ``chatft`` importable (beside them, as deployed, or through PYTHONPATH in ``env``).
    """
    import requests

    code_dir, port = Path(code_dir), port or free_port()
    environment = {key: value for key, value in (env or os.environ).items() if not key.startswith("MLFLOW_")}
    environment.update({"AML_APP_ROOT": str(code_dir), "PYTHONUNBUFFERED": "1"})
    # score.py's request log (chatft.serving.monitoring) goes beside the server log unless the caller names one.
    environment.setdefault("CHATFT_REQUEST_LOG", str(Path(log_path).with_name("requests.jsonl")))
    command = [sys.executable, str(code_dir / Path(__file__).name), "--entry_script", str(code_dir / "score.py")]
    command += ["--model_dir", str(Path(model_dir).resolve()), "--port", str(port)]  # the server runs in code_dir
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        # Its own session: stopping it signals the whole group (gunicorn master and worker), nothing else.
        process = subprocess.Popen(
            command, cwd=code_dir, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while True:
                try:
                    if requests.get(f"http://{LOOPBACK}:{port}/", timeout=1).status_code == 200:
                        break
                except requests.RequestException:  # refused, or accepted by the master while the worker boots
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}:\n{Path(log_path).read_text()}")
                if time.perf_counter() - started > timeout_s:
                    raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log_path}")
                time.sleep(0.1)
            yield {
                "port": port,
                "url": f"http://{LOOPBACK}:{port}/score",
                "log": Path(log_path),
                "requests_log": Path(environment["CHATFT_REQUEST_LOG"]),
                "pid": process.pid,
                "startup_s": time.perf_counter() - started,
            }
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


if __name__ == "__main__":
    main(parse_args())
