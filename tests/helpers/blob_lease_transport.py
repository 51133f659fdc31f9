"""A fake azure-core ``HttpTransport`` for the Blob service's Put Blob and Lease Blob operations: a simulation.

The retraining function's lock (``infra/retrain_function/retrain_handler.BlobLock``) is a real
``azure.storage.blob.BlobClient`` given this transport, so the SDK's own request building and error mapping run
(a held lease is a 409 that the SDK turns into an ``HttpResponseError``). The answers follow the Blob service REST
reference: Put Blob with ``If-None-Match: *`` is 201, or 409 ``BlobAlreadyExists``; Lease Blob
(``?comp=lease``, ``x-ms-lease-action``) acquire is 201 with ``x-ms-lease-id``, or 409 ``LeaseAlreadyPresent``;
renew and release are 200, or 409 ``LeaseIdMismatchWithLeaseOperation`` for a lease id that is not the holder's.
Every request is recorded; anything else fails the test. One instance is shared by every client in a test, as one
storage account is shared by every function instance. Leases here do not expire on their own.
"""

from __future__ import annotations

import threading
import uuid
from urllib.parse import parse_qs, urlparse

from azure.core.pipeline.transport import HttpResponse

from tests.helpers.offline_transport import InProcessTransport

_DATE = "Tue, 01 Dec 2026 21:00:00 GMT"
_MESSAGES = {
    "BlobAlreadyExists": "The specified blob already exists.",
    "LeaseAlreadyPresent": "There is already a lease present.",
    "LeaseIdMismatchWithLeaseOperation": "The lease ID specified did not match the lease ID for the blob.",
}


class _Response(HttpResponse):
    def __init__(self, request, status: int, headers: dict[str, str], body: bytes = b""):
        super().__init__(request, None)
        self.status_code, self.headers, self._body = status, headers, body
        self.reason = {200: "OK", 201: "Created", 409: "The specified resource conflicts"}[status]
        self.content_type = headers.get("Content-Type")

    def body(self) -> bytes:
        return self._body


class BlobLeaseTransport(InProcessTransport):
    def __init__(self):
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, lease action)
        self.blobs: set[str] = set()
        self.leases: dict[str, str] = {}  # blob path -> lease id
        self._guard = threading.Lock()

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        query = parse_qs(url.query)
        action = request.headers.get("x-ms-lease-action")
        with self._guard:
            self.requests.append((request.method, url.path, action))
            if request.method == "PUT" and "comp" not in query:
                return self._put_blob(request, url.path)
            if request.method == "PUT" and query.get("comp") == ["lease"]:
                return self._lease(request, url.path, action)
        raise AssertionError(f"unexpected request to the fake Blob service: {request.method} {request.url}")

    def _ok(self, request, status: int, **headers) -> _Response:
        base = {
            "ETag": '"0x8DE0000000000001"',
            "Last-Modified": _DATE,
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-version": "2025-01-05",
            "Date": _DATE,
            "Content-Length": "0",
        }
        return _Response(request, status, base | headers)

    def _error(self, request, code: str) -> _Response:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{_MESSAGES[code]}\nRequestId:{uuid.uuid4()}\nTime:2026-12-01T21:00:00Z</Message></Error>"
        )
        headers = {
            "Content-Type": "application/xml",
            "x-ms-error-code": code,
            "x-ms-version": "2025-01-05",
            "Date": _DATE,
            "Content-Length": str(len(body)),
        }
        return _Response(request, 409, headers, body.encode())

    def _put_blob(self, request, path: str) -> _Response:
        if request.headers.get("If-None-Match") == "*" and path in self.blobs:
            return self._error(request, "BlobAlreadyExists")
        self.blobs.add(path)
        return self._ok(request, 201)

    def _lease(self, request, path: str, action: str | None) -> _Response:
        held = self.leases.get(path)
        if action == "acquire":
            if held:
                return self._error(request, "LeaseAlreadyPresent")
            lease_id = request.headers.get("x-ms-proposed-lease-id") or str(uuid.uuid4())
            self.leases[path] = lease_id
            return self._ok(request, 201, **{"x-ms-lease-id": lease_id})
        if action in ("renew", "release"):
            if held != request.headers.get("x-ms-lease-id"):
                return self._error(request, "LeaseIdMismatchWithLeaseOperation")
            if action == "release":
                del self.leases[path]
                return self._ok(request, 200)
            return self._ok(request, 200, **{"x-ms-lease-id": held})
        raise AssertionError(f"unexpected lease action {action!r} on {path}")
