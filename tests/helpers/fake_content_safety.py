"""A SIMULATION of Azure AI Content Safety's text:analyze operation: a real HTTP server on 127.0.0.1.

Its shapes come from the service's published contract, not from what our code expects back:
- route and query: ``POST {endpoint}/contentsafety/text:analyze?api-version=2023-10-01`` (the stable REST spec,
  Azure/azure-rest-api-specs specification/cognitiveservices/data-plane/ContentSafety/stable/2023-10-01, host
  template ``{endpoint}/contentsafety``);
- request: ``{"text", "categories", "blocklistNames", "haltOnBlocklistHit", "outputType"}`` with text at most 10k
  Unicode code points (the SDK's ``AnalyzeTextOptions``);
- response: ``{"blocklistsMatch": [], "categoriesAnalysis": [{"category": "Hate", "severity": 0}, ...]}`` (the
  spec's AnalyzeText example), severities 0/2/4/6 for FourSeverityLevels;
- errors: ``{"error": {"code", "message"}}`` (Azure.Core.Foundations.ErrorResponse) with ``x-ms-error-code``.
The SDK's own deserializer reads every answer, so a shape it would not accept fails the tests.

What it cannot simulate is the classifier: a text's severities are whatever the test configured for a marker the
text contains (``rules``), 0 otherwise.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CATEGORIES = ("Hate", "SelfHarm", "Sexual", "Violence")
MAX_TEXT = 10_000
API_VERSION = "2023-10-01"


class FakeCredential:
    """A TokenCredential (azure-core protocol) handing out a fixed bearer token; records the scopes asked for."""

    def __init__(self):
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken("simulated-token", int(time.time()) + 3600)


class ContentSafetySimulation:
    """``with ContentSafetySimulation() as sim:`` serves on ``sim.endpoint`` until the block ends (or ``stop()``)."""

    def __init__(self):
        self.rules: dict[str, dict[str, int]] = {}  # marker in the text -> {category: severity}
        self.requests: list[dict] = []  # every accepted request body, in order
        self.status_override: int | None = None  # answer every request with this error status (an outage)
        simulation = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                simulation._handle(self)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self) -> None:
        """Stop listening: later calls find the port closed (connection refused), as with an unreachable service."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _reply(handler, status: int, body: dict, code: str | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        if code:
            handler.send_header("x-ms-error-code", code)
        handler.end_headers()
        handler.wfile.write(data)

    def _error(self, handler, status: int, code: str, message: str) -> None:
        self._reply(handler, status, {"error": {"code": code, "message": message}}, code)

    def _handle(self, handler) -> None:
        url = urlparse(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if url.path != "/contentsafety/text:analyze":
            return self._error(handler, 404, "NotFound", f"no route {url.path}")
        if parse_qs(url.query).get("api-version") != [API_VERSION]:
            return self._error(handler, 400, "InvalidRequest", "api-version missing or unsupported")
        if not (handler.headers.get("Authorization") or "").startswith("Bearer "):
            return self._error(handler, 401, "Unauthorized", "no bearer token (local auth is disabled)")
        if self.status_override:
            return self._error(handler, self.status_override, "ServiceUnavailable", "simulated outage")
        try:
            request = json.loads(body)
        except ValueError:
            return self._error(handler, 400, "InvalidRequestBody", "body is not JSON")
        text = request.get("text")
        if not isinstance(text, str) or not text:
            return self._error(handler, 400, "InvalidRequestBody", "text is required")
        if len(text) > MAX_TEXT:
            return self._error(handler, 400, "InvalidRequestBody", f"text is over {MAX_TEXT} characters")
        categories = request.get("categories") or list(CATEGORIES)
        if set(categories) - set(CATEGORIES):
            return self._error(handler, 400, "InvalidRequestBody", f"unknown categories {categories}")
        if request.get("outputType", "FourSeverityLevels") != "FourSeverityLevels":
            return self._error(handler, 400, "InvalidRequestBody", "this simulation knows FourSeverityLevels only")
        self.requests.append(request)
        severities = dict.fromkeys(categories, 0)
        for marker, rated in self.rules.items():
            if marker in text:
                for category, severity in rated.items():
                    if category in severities:
                        severities[category] = max(severities[category], severity)
        analysis = [{"category": category, "severity": severity} for category, severity in severities.items()]
        self._reply(handler, 200, {"blocklistsMatch": [], "categoriesAnalysis": analysis})
