"""A simulation of Azure ML's MLflow tracking service: a real ``mlflow server`` behind a proxy that refuses the routes
Azure ML does not serve.

Azure cannot be reached from the tests, so this is the nearest honest stand-in: every route Azure ML serves is
answered by the real MLflow 3.15 server (SQLite backend, artifacts proxied through the server, as Azure ML keeps
artifacts behind its own service), and the routes it does not serve get what Azure ML answers for them:

- ``/api/2.0/mlflow/logged-models*`` (MLflow 3's LoggedModel API, used by every ``log_model``): Azure ML answers
  404 with an empty body. Evidence: Azure/azure-sdk-for-python#44896 ("API request to endpoint
  /api/2.0/mlflow/logged-models failed with error code 404 != 200. Response body: ''", azureml-mlflow 1.60/1.61 with
  mlflow 3.5 and 3.8); azureml-examples PRs #3885 and #3902 (April-May 2026: the tracking server "does not support"
  that API). azureml-mlflow 1.62.0.post6's tracking store is MLflow's own ``RestStore`` pointed at the workspace,
  so MLflow 3.15 sends the same route.
- ``/api/2.0/mlflow/registered-models/alias`` (model aliases): an assumption, not a measurement. Azure ML's
  "Manage models registry ... with MLflow" page lists version tags among the supported operations and not aliases;
  what the service answers is not published, so the same empty-body 404 is used. MLflow's REST client turns an
  empty-body 404 into ``MlflowException`` with error code ``ENDPOINT_NOT_FOUND``.

The proxy records every request (method, path, status) so a test can show which routes a code path used.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from chatft.processes import free_port, http_ok, spawn_detached, stop_process_group, wait_until

LOGGED_MODELS = "/api/2.0/mlflow/logged-models"
ALIAS = "/api/2.0/mlflow/registered-models/alias"
# Prefixes answered with 404 (the path with or without a trailing part: logged-models/search, logged-models/<id>).
NOT_SERVED = (LOGGED_MODELS, ALIAS)
# Hop-by-hop headers are the proxy's own business (RFC 9110 §7.6.1); the rest goes through unchanged.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
START_TIMEOUT_S = 90  # mlflow server start-up on a busy 2-core machine; normally a few seconds


def not_served(path: str) -> bool:
    route = path.split("?", 1)[0]
    return any(route == prefix or route.startswith(prefix + "/") for prefix in NOT_SERVED)


@dataclass
class TrackingProxy:
    """What a test sees: the proxy's URI and the requests it answered, as (method, path, status)."""

    uri: str
    upstream: str
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def refused(self, since: int = 0) -> list[tuple[str, str, int]]:
        """Requests answered 404 for a route Azure ML does not serve, from index ``since`` of the log on (the proxy
        is shared by the session: a test passes ``len(proxy.requests)`` taken at its start to see only its own)."""
        return [r for r in self.requests[since:] if r[2] == 404 and not_served(r[1])]


def _handler(upstream_port: int, log: list, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # the request log is kept in ``log``, not printed
            pass

        def _record(self, status: int) -> None:
            with lock:
                log.append((self.command, self.path, status))

        def _forward(self) -> None:
            if self.headers.get("Transfer-Encoding"):
                self._answer(501, b"chunked request bodies are not supported by this proxy")
                return
            # Read the body first, even for a refused route: on a kept-alive connection it would be the next request.
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not_served(self.path):
                self._answer(404, b"")  # what Azure ML answers (Azure/azure-sdk-for-python#44896)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
            connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
            try:
                connection.request(self.command, self.path, body=body or None, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self._record(response.status)
            finally:
                connection.close()

        def _answer(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self._record(status)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

    return Handler


@contextmanager
def azureml_like_tracking(root: Path):
    """Start ``mlflow server`` (SQLite under ``root``, artifacts served from ``root/artifacts``) and the proxy in
    front of it, both on free loopback ports; yield a ``TrackingProxy``; stop both, whatever happens."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    log_path = root / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--serve-artifacts", "--artifacts-destination", (root / "artifacts").as_uri(),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # Azure ML's service runs no MLflow jobs; without this the server also starts 7 huey job consumers, each
    # importing MLflow (~20 s of CPU over a test session).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    server = spawn_detached(command, cwd=root, env=env, log_path=log_path)
    proxy_server = None
    try:
        wait_until(lambda: http_ok(upstream + "/health"), server, "mlflow server", log_path, START_TIMEOUT_S)
        requests: list = []
        proxy_server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(port, requests, threading.Lock()))
        proxy_server.daemon_threads = True
        threading.Thread(target=proxy_server.serve_forever, name="azureml-tracking-proxy", daemon=True).start()
        yield TrackingProxy(f"http://127.0.0.1:{proxy_server.server_address[1]}", upstream, requests)
    finally:
        if proxy_server is not None:
            proxy_server.shutdown()
            proxy_server.server_close()
        # The server runs uvicorn/gunicorn workers in its own session: stop the whole group.
        stop_process_group(server, grace_s=20)
