"""A loopback HTTP server for tests that stand in for a service (GitHub's OIDC endpoint, a chat endpoint): a JSON
reply, a quiet handler, and a server on a free port to start and stop."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers.http_stubs import send_json


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and keeps the test output free of access logs."""

    def send_json(self, body, status: int = 200) -> None:
        send_json(self, status, body)

    def read_json(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, *args):
        pass


def start(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """``handler`` served on 127.0.0.1, port 0 (a free one), from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server: ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()
