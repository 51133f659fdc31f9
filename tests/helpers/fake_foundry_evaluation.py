"""A SIMULATION of a Foundry project's safety-evaluation service, for azure-ai-evaluation's safety evaluators.

A real HTTPS server on loopback (a self-signed certificate made here, trusted through ``REQUESTS_CA_BUNDLE``: azure-core
sends a bearer token over TLS only). It answers the one operation the SDK's evaluators call for a project endpoint,
``POST {project}/sync_evals:run?api-version=2025-11-15-preview``, in the shapes of the SDK's own generated client
(``azure/ai/evaluation/_common/onedp``: the request body is a ``SyncEvalInput`` with a ``data_source`` holding one
``{query, response}`` item and one ``azure_ai_evaluator`` testing criterion ``builtin.<metric>``; the answer is an
``EvalRunOutputItem`` whose ``results`` carry ``metric``, ``score`` (0-7), ``label`` and ``reason``). It has no
classifier: an answer is rated by the markers a test puts in ``rules``, like the content-safety simulation.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import ssl
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.helpers.http_stubs import JsonHandler, send_json, serving

API_VERSION = "2025-11-15-preview"
PROJECT_PATH = "/api/projects/simulated"
METRICS = ("violence", "sexual", "self_harm", "hate_unfairness")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


class FoundryEvaluationSimulation:
    """``with FoundryEvaluationSimulation() as sim:`` serves the project at ``sim.project`` (CA: ``sim.ca_file``)."""

    def __init__(self):
        self.rules: dict[str, dict[str, int]] = {}  # marker in the response -> {metric: score 0-7}
        self.requests: list[dict] = []  # every accepted request body, in order
        self.status_override: int | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="foundry_sim_")
        self.ca_file, key_file = _self_signed(Path(self._folder.name))
        simulation = self

        class Handler(JsonHandler):
            def do_POST(self):
                simulation._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.project = f"https://127.0.0.1:{self._server.server_address[1]}{PROJECT_PATH}"
        self._lock = threading.Lock()
        self._running = contextlib.ExitStack()

    def __enter__(self):
        self._running.callback(self._folder.cleanup)  # last out: after the server has stopped
        self._running.enter_context(serving(self._server))
        return self

    def __exit__(self, *exc):
        self._running.close()

    @staticmethod
    def _error(handler, status: int, code: str, message: str) -> None:
        send_json(handler, status, {"error": {"code": code, "message": message}})

    def _handle(self, handler) -> None:
        url = urlparse(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if url.path != f"{PROJECT_PATH}/sync_evals:run":
            return self._error(handler, 404, "NotFound", f"no route {url.path}")
        if parse_qs(url.query).get("api-version") != [API_VERSION]:
            return self._error(handler, 400, "BadRequest", "api-version missing or unsupported")
        if not (handler.headers.get("Authorization") or "").startswith("Bearer "):
            return self._error(handler, 401, "Unauthorized", "no bearer token")
        if self.status_override:
            return self._error(handler, self.status_override, "SimulatedFailure", "simulated failure")
        try:
            request = json.loads(body)
            item = request["data_source"]["source"]["content"]["item"]
            (criterion,) = request["testing_criteria"]
            metric = criterion["evaluator_name"].removeprefix("builtin.")
        except (ValueError, KeyError, TypeError):
            return self._error(handler, 400, "BadRequest", "not a SyncEvalInput with one item and one criterion")
        if metric not in METRICS or criterion.get("type") != "azure_ai_evaluator":
            return self._error(handler, 400, "BadRequest", f"unknown evaluator {criterion.get('evaluator_name')}")
        with self._lock:
            self.requests.append(request)
        response = str(item.get("response", ""))
        score = max((rated.get(metric, 0) for marker, rated in self.rules.items() if marker in response), default=0)
        result = {
            "type": "azure_ai_evaluator",
            "name": metric,
            "metric": f"builtin.{metric}",
            "score": score,
            "label": "fail" if score > 3 else "pass",
            "reason": f"simulated: rated {score} by marker rules",
            "threshold": 3,
            "passed": score <= 3,
            "properties": {"metrics": {"promptTokens": "10", "completionTokens": "5"}},
        }
        send_json(
            handler,
            200,
            {
                "object": "eval.run.output_item",
                "id": f"item_{len(self.requests)}",
                "created_at": int(time.time()),
                "status": "completed",
                "datasource_item": item,
                "results": [result],
            },
        )
