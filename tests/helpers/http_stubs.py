"""HTTP stand-ins the tests run in-process (GitHub's OIDC endpoint, chat endpoints, routers): a server answering in a
background thread, JSON replies, and a quiet JSON handler."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from socketserver import BaseServer


@contextlib.contextmanager
def serving(server: BaseServer) -> Iterator[BaseServer]:
    """``server`` answering in a daemon thread until the block ends; then shut down and closed."""
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, reply) -> None:
    """Answer the handler's request with ``reply`` as JSON (Content-Length set, so the client reads it whole)."""
    data = json.dumps(reply).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class JsonHandler(BaseHTTPRequestHandler):
    """A request handler that answers JSON and keeps the test output free of access logs."""

    def send_json(self, body, status: int = 200) -> None:
        send_json(self, status, body)

    def read_json(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, *args):
        pass
