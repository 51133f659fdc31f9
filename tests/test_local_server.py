"""chatft.local_server: the traffic map and the router, in-process against two stub deployments over real HTTP."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from chatft.local_server import DEPLOYMENT_HEADER, NoRoute, Router, live_deployment, route, write_map
from tests.helpers.http_stubs import serving
from tests.helpers.servers import staged_server


class _Stub(BaseHTTPRequestHandler):
    """A deployment slot stand-in: answers with its name and what it received; a body "fail" gets a 400; a body
    "stream" gets a chunked answer of 50 events, 20 ms apart (it records whether the client stayed)."""

    protocol_version = "HTTP/1.1"

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.seen.append({"path": self.path, "route": self.headers.get("x-chatft-route"), "bytes": len(body)})
        if body == '"stream"':
            return self._stream()
        status = 400 if body == '"fail"' else 200
        reply = json.dumps({"output": self.server.name, "path": self.path, "body": body}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-ms-request-id", "abc")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def _stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for number in range(50):
                event = f"data: {number}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")
            self.server.streams.append("finished")
        except OSError:  # the router closed our connection: its client left
            self.server.streams.append(f"client left after {number} events")

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gunicorn does

    def log_message(self, *args):
        pass


@pytest.fixture
def slots():
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ("blue", "green"):
            server = stack.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), _Stub)))
            server.name, server.seen, server.streams = name, [], []
            servers[name] = server
        yield {name: server.server_address[1] for name, server in servers.items()}, servers


@pytest.fixture
def endpoint(tmp_path, slots):
    """A router on a free port following tmp_path/endpoint.json, which sends everything to blue."""
    slots, _ = slots
    path = tmp_path / "endpoint.json"
    record = {
        "endpoint_name": "chat-ft",
        "deployments": {name: {"port": port} for name, port in slots.items()},
        "traffic": {"blue": 100, "green": 0},
    }
    write_map(path, record)
    with serving(Router(path, 0)) as router:
        router.rng = random.Random(0)
        yield f"http://127.0.0.1:{router.server_address[1]}", path, record


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


def test_a_body_over_the_slots_limit_gets_413_from_the_router_and_never_reaches_the_slot(endpoint, slots):
    url, path, _ = endpoint
    _, servers = slots
    serving = json.loads((Path(__file__).parents[1] / "components/deploy_endpoint/serving.json").read_text())
    code = path.parent / "blue" / "code"
    code.mkdir(parents=True)
    (code / "serving.json").write_text(json.dumps({**serving, "max_body_bytes": 4096}))
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]})
    reply = requests.post(f"{url}/score", data=big, headers={"Content-Type": "application/json"}, timeout=10)
    assert (
        reply.status_code == 413 and reply.json()["message"] == f"request body is {len(big)} bytes; the limit is 4096"
    )
    assert servers["blue"].seen == []
    assert requests.post(f"{url}/score", data='{"q": 1}', timeout=5).status_code == 200  # under it: forwarded


def test_the_openai_route_goes_to_score_marked_as_such(endpoint, slots):
    url, _, _ = endpoint
    _, servers = slots
    reply = requests.post(f"{url}/v1/chat/completions", data="{}", headers={"x-chatft-route": "forged"}, timeout=5)
    assert reply.status_code == 200 and reply.json()["path"] == "/score"
    requests.post(f"{url}/score", data="{}", headers={"x-chatft-route": "/v1/chat/completions"}, timeout=5)
    assert [(s["path"], s["route"]) for s in servers["blue"].seen] == [
        ("/score", "/v1/chat/completions"),
        ("/score", None),  # a client cannot claim the route on /score
    ]
    unknown = requests.post(f"{url}/v1/completions", data="{}", timeout=5)
    assert unknown.status_code == 404 and "/v1/chat/completions" in unknown.json()["message"]
    assert servers["blue"].seen[2:] == []


def test_a_streamed_answer_passes_through_as_it_comes(endpoint):
    url, _, _ = endpoint
    started = time.perf_counter()
    with requests.post(f"{url}/score", data='"stream"', stream=True, timeout=10) as reply:
        assert reply.status_code == 200 and reply.headers[DEPLOYMENT_HEADER] == "blue"
        lines = reply.iter_lines()
        assert next(lines) == b"data: 0"
        first = time.perf_counter() - started
        rest = [line for line in lines if line]
    assert first < 0.5  # the first event arrived long before the last (50 x 20 ms)
    assert rest == [f"data: {n}".encode() for n in range(1, 50)]


def test_a_client_leaving_a_stream_closes_the_slots_connection(endpoint, slots):
    url, _, _ = endpoint
    _, servers = slots
    reply = requests.post(f"{url}/score", data='"stream"', stream=True, timeout=10)
    lines = reply.iter_lines()
    next(lines)
    reply.close()
    deadline = time.monotonic() + 5
    while not servers["blue"].streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers["blue"].streams and servers["blue"].streams[0].startswith("client left after")


# ---- the real thing: a slot running score.py behind the router, and the official openai client ------------------


@pytest.fixture(scope="module")
def live_endpoint(tiny_llama_dir, tmp_path_factory):
    """A slot (serve_local.py + score.py on the tiny Llama, staged as deploy_endpoint stages it) behind a router."""
    root = tmp_path_factory.mktemp("endpoint")
    home = root / "endpoints" / "chat-ft"  # the layout deploy_endpoint writes under CHATFT_HOME
    with staged_server(tiny_llama_dir, home / "blue" / "code", home=home) as slot:
        deployment = {"port": slot["port"], "pid": slot["pid"], "model_name": "chat-ft", "model_version": "1"}
        record = {"endpoint_name": "chat-ft", "deployments": {"blue": deployment}, "traffic": {"blue": 100}}
        with serving(Router(home / "endpoint.json", 0)) as router:
            url = f"http://127.0.0.1:{router.server_address[1]}"
            write_map(home / "endpoint.json", {**record, "url": f"{url}/score", "health_url": f"{url}/"})
            yield {"url": url, "slot": slot, "root": root}


def _client(live_endpoint):
    from openai import OpenAI

    # The local endpoint checks no key; the client insists on one. max_retries=0: a refusal must show at once.
    return OpenAI(base_url=f"{live_endpoint['url']}/v1", api_key="local", max_retries=0, timeout=120)


@pytest.mark.slow
def test_the_openai_client_gets_a_chat_completion(live_endpoint):
    client = _client(live_endpoint)
    reply = client.chat.completions.create(
        model="chat-ft", messages=[{"role": "user", "content": "How do I reset my router?"}], max_tokens=8
    )
    assert reply.object == "chat.completion" and reply.model == "chat-ft"
    assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0 and 1 <= reply.usage.completion_tokens <= 8


@pytest.mark.slow
def test_the_openai_client_streams_a_chat_completion(live_endpoint):
    client = _client(live_endpoint)
    stream = client.chat.completions.create(
        model="chat-ft",
        messages=[{"role": "user", "content": "How do I reset my router?"}],
        max_tokens=24,
        temperature=1.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the client stops at data: [DONE]
    with_choices = [c for c in chunks if c.choices]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert len(with_choices) > 3 and text.strip()
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 24


@pytest.mark.slow
def test_the_openai_client_sees_a_refusal_as_a_bad_request_with_its_message(live_endpoint):
    import openai

    client = _client(live_endpoint)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat-ft", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert caught.value.status_code == 400 and "max_tokens=0 is out of range" in str(caught.value)


@pytest.mark.slow
def test_no_bad_request_through_the_router_gets_a_5xx(live_endpoint):
    """Every bad-request class through router and slot: a 4xx with a message (the table in the issue's report)."""
    url = live_endpoint["url"]
    json_type = {"Content-Type": "application/json"}
    cases = {
        "over max_body_bytes (Content-Length)": (
            "/score", json.dumps({"messages": [{"role": "user", "content": "x" * 300_000}]}), json_type, 413),
        "chunked upload": ("/score", iter([b'{"messages": ', b"[]}"]), json_type, 411),
        "invalid JSON": ("/score", "{not json", json_type, 400),
        "deeply nested JSON": ("/score", "[" * 100_000 + "]" * 100_000, json_type, 400),
        "not UTF-8": ("/score", b'{"messages": "\xff"}', json_type, 400),
        "unpaired surrogate": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}',
                               json_type, 400),
        "charset latin-1": ("/score", "{}", {"Content-Type": "application/json; charset=latin-1"}, 415),
        "text/plain": ("/score", "{}", {"Content-Type": "text/plain"}, 415),
        "wrong type": ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "8"}',
                       json_type, 400),
        "NaN parameter": ("/score", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                          json_type, 400),
        "seed shape on /v1/chat/completions": ("/v1/chat/completions", '{"input_data": {}}', json_type, 400),
        "beyond the context": ("/v1/chat/completions",
                               json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1024}),
                               json_type, 400),
        "unknown path": ("/v1/embeddings", "{}", json_type, 404),
    }  # fmt: skip
    statuses = {}
    for name, (path, body, headers, expected) in cases.items():
        reply = requests.post(f"{url}{path}", data=body, headers=headers, timeout=60)
        statuses[name] = reply.status_code
        assert reply.status_code == expected, (name, reply.text[:300])
        assert reply.json()["message"] and "Traceback" not in reply.text
    print(json.dumps(statuses, indent=1))
    assert requests.get(f"{url}/score", timeout=10).status_code == 405


@pytest.mark.slow
def test_chat_streams_through_the_router(live_endpoint, capsys):
    from pipelines.endpoint import stream_reply

    connection = {"url": f"{live_endpoint['url']}/score", "headers": {}}
    messages = [{"role": "user", "content": "How do I reset my router?"}]
    answer = stream_reply(connection, messages, {"temperature": 1.0, "max_new_tokens": 16})
    assert answer and capsys.readouterr().out.strip() == answer


@pytest.mark.slow
def test_monitor_summarises_the_slots_requests_after_load(live_endpoint, capsys):
    from concurrent.futures import ThreadPoolExecutor

    from pipelines import endpoint

    body = {"messages": [{"role": "user", "content": "How do I reset my router?"}], "max_tokens": 8}
    with ThreadPoolExecutor(4) as pool:
        replies = list(
            pool.map(lambda _: requests.post(f"{live_endpoint['url']}/score", json=body, timeout=60), range(8))
        )
    assert {r.status_code for r in replies} == {200}
    requests.post(f"{live_endpoint['url']}/score", json={"messages": []}, timeout=10)  # one refusal
    args = endpoint.parse_args(["--home", str(live_endpoint["root"]), "monitor", "--last", "9"])
    assert endpoint.main(args) == 0
    out = capsys.readouterr().out
    print(out)
    assert "blue (chat-ft:1): last 9 requests since" in out
    assert "p50 " in out and "p95 " in out and "tokens/s" in out and "errors 11.1% (0 5xx)" in out
    assert "blocked 0.0%" in out


def test_summarize_counts_latency_speed_errors_and_blocks():
    from chatft.serving.monitoring import format_summary, summarize

    ok = [
        {"status": 200, "latency_ms": ms, "completion_tokens": 10, "first_token_ms": ms / 10}
        for ms in range(100, 1100, 100)
    ]
    records = ok + [{"status": 400, "error": "bad"}, {"status": 400, "blocked": "violence"}, {"status": 500}]
    summary = summarize(records)
    assert summary["requests"] == 13 and summary["latency_p50_ms"] == 500 and summary["latency_p95_ms"] == 1000
    assert summary["first_token_p50_ms"] == 50 and summary["tokens_per_s_p50"] == pytest.approx(
        10 / 0.6
    )  # nearest rank of 10 speeds
    assert summary["error_rate"] == pytest.approx(2 / 13) and summary["block_rate"] == pytest.approx(1 / 13)
    assert summary["server_errors"] == 1
    assert "errors 15.4% (1 5xx), blocked 7.7%" in format_summary("blue", summary)
    assert format_summary("blue", summarize([])) == "blue: no requests recorded yet"
