"""Small HTTP servers the tests stand up: answering a request with JSON."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


def send_json(handler: BaseHTTPRequestHandler, status: int, reply) -> None:
    """Answer the handler's request with ``reply`` as JSON (Content-Length set, so the client reads it whole)."""
    data = json.dumps(reply).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
