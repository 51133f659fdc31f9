"""The local endpoint: its processes, its traffic map, and the router that gives it one stable URL.

An endpoint named N lives in ``$CHATFT_HOME/endpoints/N/``:

    endpoint.json     the traffic map (written atomically by deploy_endpoint): the router's port, each deployment
                      slot (blue/green: pid, port, model version) and the traffic split, e.g. {"green": 100}
    router.log        one line per request: the slot that answered, status, milliseconds
    blue/, green/     a slot's code, server.log and requests.jsonl (one JSON line per request, read by
                      `make monitor`); one azureml-inference-server-http process per slot
    models/<version>/ the registered model, downloaded once per version

Clients call the router at ``http://127.0.0.1:<port>/score``; it forwards each request to a slot by the map
(re-read when the file changes) and names that slot in the ``azureml-model-deployment`` response header. This is how
an Azure ML managed endpoint behaves: its scoring URI stays put while deployments come and go, and the same
request header pins a request to one deployment. ``POST /v1/chat/completions`` (where an OpenAI client's
``base_url=http://127.0.0.1:<port>/v1`` leads) goes to the slot's ``/score``, marked as that route; a streamed
answer (server-sent events) is passed on chunk by chunk, and a client that leaves closes the slot's connection,
which cancels its generation. A body over the slot's ``max_body_bytes`` (its serving.json) gets 413 here, before
anything is forwarded. A router, rather than clients reading the map themselves, keeps
``curl``, the benchmark and Prompt Flow on one URL that survives every blue/green swap, at the cost of one loopback
hop (well under a millisecond next to a generation).

Shared by deploy_endpoint (starts and replaces processes) and ``pipelines.endpoint`` (status, stop, teardown), so
both judge a recorded PID the same way. Run the router alone with
``python -m chatft.local_server --map ENDPOINT_HOME/endpoint.json --port 8890``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from chatft.serving.contract import CHAT_ROUTE, ROUTE_HEADER
from chatft.serving.launch import LAUNCHER, SERVING_FILE

ROUTER_MODULE = "chatft.local_server"  # the router's process (python -m chatft.local_server)
MAP_FILE = "endpoint.json"
DEPLOYMENT_HEADER = "azureml-model-deployment"  # Azure ML's header: pins a request / names who answered
LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 15
FORWARD_TIMEOUT_S = 600  # a long CPU generation: 1024 tokens at ~18 tokens/s is ~60 s; generous for a slow box
ROUTER_MAX_BODY_BYTES = 16 * 1024 * 1024  # the router's own bound, when a slot's serving.json cannot be read
DRAIN_BYTES = 64 * 1024 * 1024  # a refused body up to this size is read and dropped, so the client sees the answer
# Paths the router serves -> the slot's path. The OpenAI route goes to the server's one scoring route, /score,
# marked with ROUTE_HEADER so that score.py takes only the chat-completions shape there.
ROUTES = {"/score": "/score", CHAT_ROUTE: "/score", "/": "/", "/swagger.json": "/swagger.json"}
# Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the ones the router sets itself.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date", "upgrade"}


# ---- processes ---------------------------------------------------------------------------------------------------


def pid_running(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc (macOS): trust os.kill


def is_our_server(pid: int | None) -> bool:
    """The recorded PID is still one of our endpoint processes (a slot or the router), not a reused number."""
    if not pid or not pid_running(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.is_file():
        return True
    command = cmdline.read_bytes()
    return LAUNCHER.encode() in command or ROUTER_MODULE.encode() in command


def stop_server(pid: int | None) -> bool:
    """Stop the process's whole group (gunicorn master and worker, or the router); SIGKILL if it hangs.

    Returns False, touching nothing, when ``pid`` is not one of our processes.
    """
    if not is_our_server(pid):
        return False
    group = os.getpgid(pid) == pid  # started as a session leader, so the group is exactly the server
    kill = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    kill(signal.SIGTERM)  # gunicorn: finish the requests in flight, then exit
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_running(pid):
        if time.monotonic() > deadline:
            kill(signal.SIGKILL)
            break
        time.sleep(0.1)
    return True


# ---- the traffic map ---------------------------------------------------------------------------------------------


def read_map(path: Path) -> dict | None:
    """The endpoint's record, or None when there is none."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def write_map(path: Path, record: dict) -> None:
    """Replace the map in one step: a reader (the router) sees the old map or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def live_deployment(record: dict | None) -> str | None:
    """The slot taking the most traffic (None when none takes any)."""
    traffic = {name: share for name, share in ((record or {}).get("traffic") or {}).items() if share > 0}
    return max(traffic, key=traffic.get) if traffic else None


class NoRoute(LookupError):
    """No deployment can take this request; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def route(record: dict | None, requested: str | None, rng: random.Random) -> tuple[str, int]:
    """(slot, port) for one request: the slot named in the header if any, else one drawn by the traffic weights."""
    if not record:
        raise NoRoute(503, "this endpoint has been removed (no traffic map); deploy it again with `make run`")
    deployments = record.get("deployments") or {}
    if requested:
        if requested not in deployments:
            known = ", ".join(deployments) or "none"
            raise NoRoute(404, f"{DEPLOYMENT_HEADER}: no deployment {requested!r} (deployments: {known})")
        return requested, deployments[requested]["port"]
    weighted = [(name, share) for name, share in (record.get("traffic") or {}).items() if share > 0]
    weighted = [(name, share) for name, share in weighted if name in deployments]
    if not weighted:
        raise NoRoute(503, f"endpoint {record.get('endpoint_name')!r} has no deployment taking traffic")
    names, shares = zip(*weighted, strict=True)
    name = rng.choices(names, weights=shares)[0]
    return name, deployments[name]["port"]


class _MapCache:
    """The map, re-read only when the file was replaced (one stat per request)."""

    def __init__(self, path: Path):
        self.path, self.key, self.record = Path(path), None, None
        self.lock = threading.Lock()

    def get(self) -> dict | None:
        try:
            stat = self.path.stat()
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            return None
        with self.lock:
            if key != self.key:
                self.record, self.key = read_map(self.path), key
            return self.record


# ---- the router --------------------------------------------------------------------------------------------------


class _RouterHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections (the benchmark does)
    server_version = "chatft-router"

    def setup(self):
        super().setup()
        # Headers and body leave in two writes; with Nagle's algorithm on, the body would wait for the client's
        # delayed ACK of the headers (~40 ms per request on a kept-alive connection).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]], slot: str | None) -> None:
        self.slot = slot  # before send_response, which logs the request
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        if slot:
            self.send_header(DEPLOYMENT_HEADER, slot)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, slot: str | None = None) -> None:
        body = json.dumps({"message": message}).encode()
        self._reply(status, body, [("Content-Type", "application/json")], slot)

    def _discard_body(self, length: int) -> None:
        """Read and drop a body we will not forward, so the client gets to read our answer; past DRAIN_BYTES the
        connection is closed instead (its unread bytes would otherwise be taken for the next request)."""
        left = min(length, DRAIN_BYTES)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
        if length > DRAIN_BYTES:
            self.close_connection = True

    def _forward(self) -> None:
        self.started, self.slot = time.perf_counter(), None
        path = self.path.split("?", 1)[0]
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return self._error(411, "send the body with a Content-Length (chunked uploads are not supported)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return self._error(400, f"Content-Length is not a byte count: {self.headers.get('Content-Length')!r}")
        if path not in ROUTES:
            self._discard_body(length)
            return self._error(404, f"no route {path!r}; this endpoint serves {', '.join(ROUTES)}")
        try:
            slot, port = route(self.server.map.get(), self.headers.get(DEPLOYMENT_HEADER), self.server.rng)
        except NoRoute as err:
            self._discard_body(length)
            return self._error(err.status, str(err))
        limit = self.server.body_limit(slot)
        if length > limit:
            # Refused here, before a byte goes to the slot: a slot that answers 413 and closes while the body is
            # still being forwarded would leave the router with a broken pipe (a 502).
            self._discard_body(length)
            self.close_connection = True
            return self._error(413, f"request body is {length} bytes; the limit is {limit}", slot)
        body = self.rfile.read(length) if length > 0 else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS | {"host", ROUTE_HEADER}}
        if path == CHAT_ROUTE:
            headers[ROUTE_HEADER] = CHAT_ROUTE
        upstream = http.client.HTTPConnection(LOOPBACK, port, timeout=FORWARD_TIMEOUT_S)
        try:
            try:
                upstream.request(self.command, ROUTES[path], body=body, headers=headers)
                response = upstream.getresponse()
                streamed = response.getheader("Content-Length") is None
                data = b"" if streamed else response.read()
            except OSError as err:
                return self._error(502, f"deployment {slot} ({LOOPBACK}:{port}) did not answer: {err}", slot)
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_HEADERS | {DEPLOYMENT_HEADER}]
            if streamed:
                return self._relay(response, passed, slot)
            self._reply(response.status, data, passed, slot)
        finally:
            upstream.close()  # a client gone mid-stream: the slot's next write fails and it cancels the generation

    def _relay(self, response, headers: list[tuple[str, str]], slot: str) -> None:
        """Pass a streamed answer (server-sent events) on chunk by chunk, as it comes."""
        self.slot = slot
        self.send_response(response.status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header(DEPLOYMENT_HEADER, slot)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                try:
                    chunk = response.read1(65536)
                except (OSError, http.client.HTTPException):
                    chunk = b""  # the slot went away mid-answer: end the stream, the client sees it cut short
                    self.close_connection = True
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client left: stop reading; closing upstream tells the slot
            self.close_connection = True

    def log_request(self, code="-", size="-"):
        took = (time.perf_counter() - getattr(self, "started", time.perf_counter())) * 1000
        self.log_message('"%s" %s -> %s %.1f ms', self.requestline, code, getattr(self, "slot", None), took)


class Router(ThreadingHTTPServer):
    daemon_threads = True  # a hung upstream never blocks shutdown
    allow_reuse_address = True  # as gunicorn: a port in TIME_WAIT after a restart is free

    def __init__(self, map_path: Path, port: int):
        super().__init__((LOOPBACK, port), _RouterHandler)
        self.map = _MapCache(map_path)
        self.rng = random.Random()
        self._limits: dict[Path, tuple[tuple, int]] = {}

    def body_limit(self, slot: str) -> int:
        """The slot's own max_body_bytes (its code/serving.json), else the router's bound ROUTER_MAX_BODY_BYTES."""
        from chatft.serving.settings import load_serving_settings

        path = self.map.path.parent / slot / "code" / SERVING_FILE
        try:
            stat = path.stat()
            key = (stat.st_ino, stat.st_mtime_ns)
        except FileNotFoundError:
            return ROUTER_MAX_BODY_BYTES
        cached = self._limits.get(path)
        if cached is None or cached[0] != key:
            try:
                limit = load_serving_settings(path)["max_body_bytes"]
            except ValueError:
                limit = ROUTER_MAX_BODY_BYTES
            cached = self._limits[path] = (key, limit)
        return cached[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a local endpoint's stable URL by its traffic map.")
    parser.add_argument("--map", required=True, type=Path, help=f"the endpoint's {MAP_FILE}")
    parser.add_argument("--port", required=True, type=int, help=f"port on {LOOPBACK}")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    router = Router(args.map, args.port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=router.shutdown, daemon=True).start())
    print(f"routing http://{LOOPBACK}:{args.port} by {args.map}", file=sys.stderr, flush=True)
    router.serve_forever()
    router.server_close()


if __name__ == "__main__":
    main(parse_args())
