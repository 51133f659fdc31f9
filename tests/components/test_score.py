"""score.py: init() and run() in-process on a registry layout, then the real server over HTTP (loopback)."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from chatft.serving.settings import load_serving_settings
from tests.helpers.chat_requests import (
    BAD_CHAT_REQUESTS,
    BAD_PARAMETERS,
    BAD_REQUESTS,
    CHAT_REQUEST,
    ODD_BODIES,
    QUESTIONS,
    SEED_REQUEST,
    as_body,
    with_parameters,
)
from tests.helpers.components import load_script
from tests.helpers.servers import staged_server

COMPONENT = Path(__file__).resolve().parents[2] / "components" / "deploy_endpoint"
SERVING_FILE = COMPONENT / "serving.json"


@pytest.fixture(scope="module")
def score():
    return load_script("score_under_test", COMPONENT / "score.py")


def _flask_request(data, content_type="application/json", method="POST"):
    from flask import Flask, request

    context = Flask("score_test").test_request_context("/score", method=method, data=data, content_type=content_type)
    context.push()
    return context, request._get_current_object()


def test_init_and_run_find_the_model_in_a_registry_layout(score, tiny_llama_dir, tmp_path, monkeypatch):
    # On Azure ML, AZUREML_MODEL_DIR holds the MLflow model folder; the HF checkpoint sits a few levels down.
    nested = tmp_path / "azureml-models" / "chat-ft" / "3" / "model" / "artifacts"
    shutil.copytree(tiny_llama_dir, nested / "merged_model")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "azureml-models" / "chat-ft" / "3"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # init() puts its own folder on sys.path
    score.init()
    context, request = _flask_request(json.dumps(with_parameters({"max_new_tokens": 4})))
    try:
        reply = score.run(request)
    finally:
        context.pop()
    assert reply.status_code == 200
    assert set(json.loads(reply.get_data())) == {"output"}
    assert float(reply.headers["x-chatft-generate-ms"]) > 0 and reply.headers["x-chatft-batch-size"] == "1"
    context, request = _flask_request(json.dumps({"input_data": {"input_string": []}}))
    try:
        refused = score.run(request)
    finally:
        context.pop()
    assert refused.status_code == 400
    assert "input_string is empty" in json.loads(refused.get_data())["message"]


# ---- the real server over HTTP -----------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (IPv4, from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture(scope="module")
def server(tiny_llama_dir, tmp_path_factory):
    """serve_local.py + score.py + serving.json + chatft staged like a deployment's code folder, on loopback."""
    root = tmp_path_factory.mktemp("score_server")
    model_dir = root / "azureml-models" / "chat-ft" / "1"  # Azure ML's layout; the server reads name:version off it
    shutil.copytree(tiny_llama_dir, model_dir / "artifacts" / "merged_model")
    with staged_server(model_dir, root / "code", home=root) as running:
        print(f"server healthy after {running['startup_s']:.1f} s")
        yield running


def _post(server, body, content_type="application/json", **kwargs):
    import requests

    headers = {"Content-Type": content_type} if content_type else {}
    return requests.post(server["url"], data=body, headers=headers, timeout=60, **kwargs)


@pytest.mark.slow
def test_server_listens_on_loopback_only_with_threads(server):
    assert listening_addresses(server["port"]) == {"127.0.0.1"}
    log = server["log"].read_text()
    assert "Using worker: gthread" in log  # serving.json's threads reached gunicorn


@pytest.mark.slow
def test_server_answers_the_seed_request(server):
    started = time.perf_counter()
    response = _post(server, json.dumps(SEED_REQUEST))
    print(f"seed request: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"output"} and isinstance(body["output"], str)
    assert float(response.headers["x-chatft-generate-ms"]) > 0
    assert 1 <= int(response.headers["x-chatft-completion-tokens"]) <= 16
    assert response.headers["x-chatft-finish-reason"] in ("stop", "length")


@pytest.mark.slow
def test_server_answers_the_chat_completions_shape(server):
    response = _post(server, json.dumps({**CHAT_REQUEST, "model": "chat-ft", "temperature": 0}))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "chat-ft"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] == int(response.headers["x-chatft-completion-tokens"])


def _oversized() -> str:
    limit = load_serving_settings(SERVING_FILE)["max_body_bytes"]
    return json.dumps(with_parameters({})).replace("How do I", "How " + "very " * (limit // 5) + "do I")


def _chunks(text: str):
    data = text.encode()
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


HTTP_CASES = (
    [(request, expected, 400, "application/json") for request, expected in BAD_REQUESTS]
    + [(with_parameters(p), expected, 400, "application/json") for p, expected in BAD_PARAMETERS]
    + [(request, expected, 400, "application/json") for request, expected in BAD_CHAT_REQUESTS]
    + [(request, expected, 400, "application/json") for request, expected in ODD_BODIES]
    + [
        (b'{"input_data": "\xff"}', "not UTF-8", 400, "application/json"),
        (with_parameters({"max_new_tokens": 1024}), "exceeds the model's context of 1024", 400, "application/json"),
        ("input_data=x", "send Content-Type: application/json", 415, "application/x-www-form-urlencoded"),
        (json.dumps(SEED_REQUEST), "send JSON as UTF-8", 415, "application/json; charset=latin-1"),
        (
            '{"input_data": {"input_string": [{"role": "user", "content": "caf\xe9"}]}}'.encode("latin-1"),
            "not UTF-8",
            400,
            "application/json",
        ),  # fmt: skip
        (json.dumps(SEED_REQUEST), "send Content-Type: application/json", 415, "text/plain"),
    ]
)


@pytest.mark.slow
@pytest.mark.parametrize(("request_body", "expected", "status", "content_type"), HTTP_CASES, ids=lambda v: str(v)[:30])
def test_server_rejects_bad_requests_with_a_message(server, request_body, expected, status, content_type):
    response = _post(server, request_body if isinstance(request_body, bytes) else as_body(request_body), content_type)
    assert response.status_code == status, response.text
    assert expected in response.json()["message"]
    assert "Traceback" not in response.text


@pytest.mark.slow
def test_server_refuses_an_oversized_body_with_or_without_its_length(server):
    body = _oversized()
    sized = _post(server, body)
    assert sized.status_code == 413 and "the limit is" in sized.json()["message"]
    chunked = _post(server, _chunks(body))  # a generator: sent chunked, with no Content-Length
    assert chunked.status_code == 413 and "over the limit" in chunked.json()["message"]


@pytest.mark.slow
def test_server_refuses_other_methods(server):
    import requests

    response = requests.get(server["url"], timeout=30)
    assert response.status_code == 405 and "POST a JSON body" in response.json()["message"]


@pytest.mark.slow
def test_server_batches_concurrent_requests_without_changing_greedy_answers(server):
    requests_ = [
        {"messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": 24} for q in QUESTIONS * 2
    ]
    alone = [_post(server, json.dumps(r)) for r in requests_]
    assert {r.status_code for r in alone} == {200}
    barrier = threading.Barrier(len(requests_))
    together = [None] * len(requests_)

    def ask(i):
        barrier.wait()
        together[i] = _post(server, json.dumps(requests_[i]))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(requests_))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert {r.status_code for r in together} == {200}
    content = [[c["message"]["content"] for c in r.json()["choices"]] for r in (*alone, *together)]
    assert content[: len(alone)] == content[len(alone) :]
    sizes = [int(r.headers["x-chatft-batch-size"]) for r in together]
    print(f"batch sizes of 8 concurrent requests: {sizes}")
    assert max(sizes) > 1  # the worker's threads let requests overlap, and the batcher joined them


def _events(response) -> list:
    """The server-sent events of a streamed answer: decoded chunks, and "[DONE]" as the string."""
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line:
            assert line.startswith("data: "), line
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.slow
def test_server_streams_chat_completion_chunks_ending_with_done(server):
    # Sampled: the tiny random model's greedy answers are blank; equality with the whole answer is tested in-process.
    request = {**CHAT_REQUEST, "temperature": 1.0, "max_tokens": 24}
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    with _post(server, json.dumps(streamed), stream=True) as response:
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        assert "Content-Length" not in response.headers  # sent as it comes
        events = _events(response)
    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(chunks) > 3 and text.strip()  # the answer came in pieces
    assert usage["choices"] == [] and 1 <= usage["usage"]["completion_tokens"] <= 24


@pytest.mark.slow
def test_a_client_that_disconnects_cancels_its_generation(server):
    request = {**CHAT_REQUEST, "temperature": 1.0, "max_tokens": 900, "stream": True}
    before = server["requests_log"].read_text().count("\n") if server["requests_log"].exists() else 0
    response = _post(server, json.dumps({**request, "messages": [{"role": "user", "content": "Tell a long story"}]}),
                     stream=True)  # fmt: skip
    assert response.status_code == 200, response.text
    lines = response.iter_lines()
    next(lines), next(lines)  # the role chunk and the first piece: the generation runs
    response.close()  # the client goes away mid-answer
    deadline = time.monotonic() + 30
    record = None
    while time.monotonic() < deadline and record is None:
        rows = server["requests_log"].read_text().splitlines()[before:] if server["requests_log"].exists() else []
        record = next((json.loads(r) for r in rows if json.loads(r)["status"] == 499), None)
        time.sleep(0.2)
    assert record is not None, "no cancelled request was recorded"
    assert record["finish_reason"] == "cancelled" and record["stream"] is True
    assert record["completion_tokens"] < 900  # it stopped well before max_tokens


@pytest.mark.slow
def test_server_writes_one_json_line_per_request_without_content(server):
    log = server["requests_log"]
    before = log.read_text().count("\n") if log.exists() else 0
    assert _post(server, json.dumps(CHAT_REQUEST)).status_code == 200
    assert _post(server, json.dumps({"messages": []})).status_code == 400
    rows = [json.loads(line) for line in log.read_text().splitlines()[before:]]
    assert [r["status"] for r in rows] == [200, 400]
    ok, refused = rows
    assert {"time", "route", "status", "latency_ms", "prompt_tokens", "completion_tokens", "blocked"} <= set(ok)
    assert ok["route"] == "/score" and ok["prompt_tokens"] > 0 and ok["completion_tokens"] >= 1
    assert ok["latency_ms"] > 0 and ok["blocked"] is None and refused["error"].startswith("messages is empty")
    assert "router" not in log.read_text() and "messages" not in ok and "output" not in ok  # no content


@pytest.mark.slow
def test_server_log_has_no_stack_trace(server):
    # Runs last in this module: every bad request above was answered without an exception in the server.
    assert "Traceback" not in server["log"].read_text()
