"""score.py: the request contract in-process, then the real azureml-inference-server-http on loopback over HTTP."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMPONENT = Path(__file__).resolve().parents[2] / "components" / "deploy_endpoint"
CHATFT = Path(__file__).resolve().parents[2] / "src" / "chatft"
SEED_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "How do I reset my router?"}],
        "parameters": {"temperature": 0.7, "max_new_tokens": 16},
    }
}
# (request body, words the 400 message must contain)
BAD_REQUESTS = [
    ("{not json", "not valid JSON"),
    ("", "request body is empty"),
    ("[1, 2]", "must be a JSON object"),
    ({"inputs": []}, 'no "input_data"'),
    ({"input_data": {"input_string": []}}, "input_string is empty"),
    ({"input_data": {"input_string": "hello"}}, "must be a list"),
    ({"input_data": {"input_string": [{"role": "bot", "content": "hi"}]}}, 'role is "bot"'),
    ({"input_data": {"input_string": [{"role": "user", "content": "  "}]}}, "content must be a non-empty string"),
    ({"input_data": {"input_string": [{"role": "user"}]}}, 'exactly "role" and "content"'),
    (
        {"input_data": {"input_string": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}},
        'last message must have role "user"',
    ),
    (
        {"input_data": {"input_string": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}},
        "system message may only come first",
    ),
    ({"input_data": {"input_string": [{"role": "user", "content": "a"}], "extra": 1}}, "unknown key(s) extra"),
    ({**SEED_REQUEST, "more": 1}, "unknown top-level key(s) more"),
]
BAD_PARAMETERS = [
    ({"temperature": 5}, "temperature=5 is out of range"),
    ({"temperature": -0.1}, "temperature=-0.1 is out of range"),
    ({"top_p": 1.5}, "top_p=1.5 is out of range"),
    ({"max_new_tokens": 0}, "max_new_tokens=0 is out of range"),
    ({"max_new_tokens": 100000}, "max_new_tokens=100000 is out of range"),
    ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer, got 1.5"),
    ({"temperature": True}, "temperature must be a number, got true"),
    ({"do_sample": "yes"}, 'do_sample must be true or false, got "yes"'),
    ({"seed": 1}, "unknown parameter(s) seed"),
]


def _load_score():
    spec = importlib.util.spec_from_file_location("score_under_test", COMPONENT / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def score():
    return _load_score()


def _with_parameters(parameters: dict) -> dict:
    return {"input_data": {"input_string": SEED_REQUEST["input_data"]["input_string"], "parameters": parameters}}


def _body(request) -> str:
    return request if isinstance(request, str) else json.dumps(request)


# ---- the contract, in-process ------------------------------------------------------------------------------------


def test_parse_request_applies_defaults(score):
    messages, params = score.parse_request(
        json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}]}})
    )
    assert messages == [{"role": "user", "content": "x"}]
    assert params == {name: default for name, (_, default, _, _) in score.PARAMETERS.items()}


def test_parse_request_keeps_given_parameters(score):
    _, params = score.parse_request(
        _body(_with_parameters({"temperature": 0, "max_new_tokens": 4, "do_sample": False}))
    )
    assert params["temperature"] == 0.0 and isinstance(params["temperature"], float)
    assert params["max_new_tokens"] == 4 and params["do_sample"] is False


@pytest.mark.parametrize(
    ("request_body", "expected"), BAD_REQUESTS + [(_with_parameters(p), e) for p, e in BAD_PARAMETERS]
)
def test_parse_request_rejects(score, request_body, expected):
    with pytest.raises(score.RequestError) as caught:
        score.parse_request(_body(request_body))
    assert expected in str(caught.value)


@pytest.fixture(scope="module")
def phi3_generator(score, tiny_phi3_dir):
    return score.ChatGenerator(tiny_phi3_dir)


def test_generator_stops_at_phi3_end_of_turn(phi3_generator):
    # Phi-3's eos_token is <|endoftext|>; a turn ends at <|end|>, which must be a stop token.
    end = phi3_generator.tokenizer.convert_tokens_to_ids("<|end|>")
    assert end in phi3_generator.stop_ids
    assert phi3_generator.tokenizer.eos_token_id in phi3_generator.stop_ids


def test_generator_replies_and_is_greedy_when_asked(score, phi3_generator):
    messages, params = score.parse_request(_body(_with_parameters({"do_sample": False, "max_new_tokens": 6})))
    first = phi3_generator.reply(messages, params)
    assert isinstance(first, str)
    assert first == phi3_generator.reply(messages, params)  # greedy: the same answer twice
    assert "<|end|>" not in first and "<|assistant|>" not in first


def test_generator_refuses_a_conversation_beyond_the_context(score, phi3_generator):
    context = phi3_generator.context_length
    messages, params = score.parse_request(_body(_with_parameters({"max_new_tokens": 1024})))
    assert context <= 1024  # the tiny model: a short prompt plus 1024 new tokens cannot fit
    with pytest.raises(score.RequestError, match=f"exceeds the model's context of {context}"):
        phi3_generator.reply(messages, params)


def test_init_and_run_find_the_model_in_a_registry_layout(score, tiny_llama_dir, tmp_path, monkeypatch):
    # On Azure ML, AZUREML_MODEL_DIR holds the MLflow model folder; the HF checkpoint sits a few levels down.
    nested = tmp_path / "azureml-models" / "chat-ft" / "3" / "model" / "artifacts"
    shutil.copytree(tiny_llama_dir, nested / "merged_model")
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path / "azureml-models" / "chat-ft" / "3"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # init() puts its own folder on sys.path
    score.init()
    reply = score.run(json.dumps(_with_parameters({"max_new_tokens": 4})))
    assert set(reply) == {"output"} and isinstance(reply["output"], str)
    refused = score.run(json.dumps({"input_data": {"input_string": []}}))
    assert refused.status_code == 400
    assert "input_string is empty" in json.loads(refused.get_data())["message"]


# ---- the real server over HTTP -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    """serve_local.py + score.py + chatft staged like a deployment's code folder, on a free loopback port."""
    import requests

    root = tmp_path_factory.mktemp("score_server")
    code = root / "code"
    code.mkdir()
    for name in ("score.py", "serve_local.py"):
        shutil.copy2(COMPONENT / name, code / name)
    shutil.copytree(CHATFT, code / "chatft", ignore=shutil.ignore_patterns("__pycache__"))
    model_dir = root / "model"
    shutil.copytree(tiny_llama_dir, model_dir / "artifacts" / "merged_model")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    env.update({"HOME": str(root), "AML_APP_ROOT": str(code)})
    log = (root / "server.log").open("wb")
    command = [
        sys.executable,
        "serve_local.py",
        "--entry_script",
        "score.py",
        "--model_dir",
        str(model_dir),
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.perf_counter()
    try:
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:  # refused, or accepted by the master while the worker boots
                pass
            assert process.poll() is None, (root / "server.log").read_text()
            assert time.perf_counter() - started < 60, "server not healthy after 60 s"
            time.sleep(0.1)
        print(f"server healthy after {time.perf_counter() - started:.1f} s")
        yield {"port": port, "url": f"http://127.0.0.1:{port}/score", "log": root / "server.log"}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
        log.close()


@pytest.mark.slow
def test_server_listens_on_loopback_only(server):
    assert listening_addresses(server["port"]) == {"127.0.0.1"}


@pytest.mark.slow
def test_server_answers_the_seed_request(server):
    import requests

    started = time.perf_counter()
    response = requests.post(server["url"], json=SEED_REQUEST, timeout=60)
    print(f"seed request: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"output"} and isinstance(body["output"], str)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_body", "expected"),
    [BAD_REQUESTS[0], BAD_REQUESTS[3], BAD_REQUESTS[4], BAD_REQUESTS[6]]
    + [(_with_parameters(p), e) for p, e in BAD_PARAMETERS[:1] + BAD_PARAMETERS[3:4] + BAD_PARAMETERS[7:8]],
)
def test_server_rejects_bad_requests_with_a_message(server, request_body, expected):
    import requests

    response = requests.post(
        server["url"], data=_body(request_body), headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == 400
    message = response.json()["message"]
    assert expected in message
    assert "Traceback" not in response.text


@pytest.mark.slow
def test_server_explains_a_missing_content_type(server):
    import requests

    # requests sends form encoding for a dict given as data=; the server then hands score.py an empty body.
    response = requests.post(server["url"], data={"input_data": "x"}, timeout=30)
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["message"]
