"""chatft.local_server: the traffic map and the router, in-process against two stub deployments over real HTTP."""

from __future__ import annotations

import json
import random
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from chatft.local_server import DEPLOYMENT_HEADER, NoRoute, Router, live_deployment, route, write_map


class _Stub(BaseHTTPRequestHandler):
    """A deployment slot stand-in: answers with its name and what it received; a body "fail" gets a 400."""

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        status = 400 if body == '"fail"' else 200
        reply = json.dumps({"output": self.server.name, "path": self.path, "body": body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-ms-request-id", "abc")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gunicorn does

    def log_message(self, *args):
        pass


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server


@pytest.fixture
def slots():
    servers = {}
    for name in ("blue", "green"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        server.name = name
        servers[name] = _serve(server)
    yield {name: server.server_address[1] for name, server in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def endpoint(tmp_path, slots):
    """A router on a free port following tmp_path/endpoint.json, which sends everything to blue."""
    path = tmp_path / "endpoint.json"
    record = {
        "endpoint_name": "chat-ft",
        "deployments": {name: {"port": port} for name, port in slots.items()},
        "traffic": {"blue": 100, "green": 0},
    }
    write_map(path, record)
    router = _serve(Router(path, 0))
    router.rng = random.Random(0)
    url = f"http://127.0.0.1:{router.server_address[1]}"
    yield url, path, record
    router.shutdown()
    router.server_close()


def test_requests_go_where_the_map_says_and_come_back_unchanged(endpoint):
    url, _, _ = endpoint
    reply = requests.post(f"{url}/score", data='{"q": 1}', headers={"Content-Type": "application/json"}, timeout=5)
    assert reply.status_code == 200 and reply.headers[DEPLOYMENT_HEADER] == "blue"
    assert reply.json() == {"output": "blue", "path": "/score", "body": '{"q": 1}'}
    assert reply.headers["x-ms-request-id"] == "abc"  # the deployment's own headers pass through
    refused = requests.post(f"{url}/score", data='"fail"', timeout=5)
    assert refused.status_code == 400 and refused.headers[DEPLOYMENT_HEADER] == "blue"  # statuses pass through
    assert requests.get(f"{url}/", timeout=5).json()["path"] == "/"


def test_a_replaced_map_takes_effect_on_the_next_request(endpoint):
    url, path, record = endpoint
    with requests.Session() as session:  # one kept-alive connection across the swap
        assert session.post(f"{url}/score", timeout=5).headers[DEPLOYMENT_HEADER] == "blue"
        write_map(path, {**record, "traffic": {"green": 100}})
        assert session.post(f"{url}/score", timeout=5).headers[DEPLOYMENT_HEADER] == "green"
    assert [p.name for p in path.parent.iterdir()] == ["endpoint.json"]  # no partial file left behind


def test_the_header_pins_a_deployment_even_without_traffic(endpoint):
    url, _, _ = endpoint
    reply = requests.post(f"{url}/score", headers={DEPLOYMENT_HEADER: "green"}, timeout=5)
    assert reply.json()["output"] == "green"
    unknown = requests.post(f"{url}/score", headers={DEPLOYMENT_HEADER: "red"}, timeout=5)
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "azureml-model-deployment: no deployment 'red' (deployments: blue, green)"


def test_a_split_follows_the_weights(endpoint):
    url, path, record = endpoint
    write_map(path, {**record, "traffic": {"blue": 75, "green": 25}})
    with requests.Session() as session:
        served = [session.post(f"{url}/score", timeout=5).headers[DEPLOYMENT_HEADER] for _ in range(200)]
    assert 0.6 < served.count("blue") / 200 < 0.9  # 75% expected (seeded draw)


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"traffic": {"blue": 0, "green": 0}}, 503, "endpoint 'chat-ft' has no deployment taking traffic"),
        (None, 503, "this endpoint has been removed (no traffic map)"),
        ({"deployments": {"blue": {"port": 1}}}, 502, "deployment blue (127.0.0.1:1) did not answer"),
    ],
)
def test_no_route_is_a_clear_error(endpoint, change, status, message):
    url, path, record = endpoint
    if change is None:
        path.unlink()
    else:
        write_map(path, {**record, **change})
    reply = requests.post(f"{url}/score", timeout=5)
    assert reply.status_code == status and reply.json()["message"].startswith(message)


def test_bodies_need_a_length(endpoint):
    url, _, _ = endpoint
    chunked = requests.post(f"{url}/score", data=iter([b'{"a":', b" 1}"]), timeout=5)
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["message"]


def test_live_deployment_and_route_without_a_server():
    record = {"deployments": {"blue": {"port": 1}, "green": {"port": 2}}, "traffic": {"blue": 0, "green": 100}}
    assert live_deployment(record) == "green" and live_deployment({"traffic": {}}) is None
    assert live_deployment(None) is None
    assert route(record, None, random.Random(0)) == ("green", 2)
    with pytest.raises(NoRoute, match="no deployment taking traffic"):
        route({**record, "traffic": {"red": 100}}, None, random.Random(0))  # traffic to a slot not recorded
