"""pipelines.endpoint against an Azure ML endpoint, offline: a recording fake MLClient for the control plane and a
loopback server that checks the key as a managed endpoint does (a simulation: no Azure is reached).

The local half (status, ask, chat, stop, teardown against real servers) is in tests/components/test_deploy_endpoint.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import endpoint
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.helpers.fake_azure import FakeMLClient

KEY = "s3cret-endpoint-key"


class _KeyedEndpoint(BaseHTTPRequestHandler):
    """Answers /score like a key-auth managed endpoint: 401 without the right bearer key, else an echo reply."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            status, reply = 401, {"message": "invalid key"}  # what a real endpoint says: nothing of the key
        else:  # the seed's shape, or chat completions (`chat` asks with stream=true; this one answers in one piece)
            turns = body["messages"] if "messages" in body else body["input_data"]["input_string"]
            text = f"reply to {turns[-1]['content']!r} after {len(turns) - 1} turns"
            chat = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            status, reply = 200, chat if "messages" in body else {"output": text}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scoring_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KeyedEndpoint)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/score"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_endpoint_env(monkeypatch):
    monkeypatch.delenv(endpoint.URL_ENV, raising=False)
    monkeypatch.delenv(endpoint.KEY_ENV, raising=False)


def azure(*argv: str) -> list[str]:
    return ["--target", "azure", *argv]


def live_client(scoring_url: str | None = None) -> FakeMLClient:
    client = FakeMLClient(key=KEY).with_live("chat-ft-phi3", "green", "chat-ft:7")
    client.scoring_uri = scoring_url
    return client


def test_azure_endpoint_name_comes_from_the_azure_preset():
    preset = load_settings(PROJECT_ROOT / "pipelines/config/azure.yaml").step("deploy_endpoint")["endpoint_name"]
    assert endpoint.configured("deploy_endpoint", "endpoint_name", "azure") == preset
    assert endpoint.configured("register_model", "model_name", "local") == "chat-ft"  # the component default


def test_chat_with_the_workspace_endpoint_keeps_history_and_never_prints_the_key(scoring_url, monkeypatch, capsys):
    client = live_client(scoring_url)
    monkeypatch.setattr("builtins.input", _typed("hello", "and then?", "/exit"))
    assert endpoint.main(endpoint.parse_args(azure("chat")), ml_client=client) == 0
    out, err = capsys.readouterr()
    assert f"Chatting with chat-ft-phi3 (Azure ML) at {scoring_url}" in out
    assert "bot> reply to 'hello' after 0 turns" in out
    assert "bot> reply to 'and then?' after 2 turns" in out  # the history went along
    assert client.sequence()[:2] == ["online_endpoints.get", "online_endpoints.get_keys"]
    assert KEY not in out + err


def test_ask_with_url_and_key_from_the_environment_needs_no_workspace(scoring_url, monkeypatch, capsys):
    monkeypatch.setenv(endpoint.URL_ENV, scoring_url)
    monkeypatch.setenv(endpoint.KEY_ENV, KEY)
    client = FakeMLClient()
    assert endpoint.main(endpoint.parse_args(azure("ask", "Is it on?")), ml_client=client) == 0
    assert capsys.readouterr().out == "reply to 'Is it on?' after 0 turns\n"
    assert client.calls == []


def test_a_wrong_key_is_reported_without_the_key(scoring_url, monkeypatch, capsys):
    monkeypatch.setenv(endpoint.URL_ENV, scoring_url)
    monkeypatch.setenv(endpoint.KEY_ENV, "wrong-key-also-secret")
    with pytest.raises(endpoint.EndpointError, match="HTTP 401: invalid key") as raised:
        endpoint.main(endpoint.parse_args(azure("ask", "hi")))
    out, err = capsys.readouterr()
    assert "wrong-key-also-secret" not in str(raised.value) + out + err


@pytest.mark.parametrize(("name", "missing"), [("URL_ENV", "CHATFT_ENDPOINT_KEY"), ("KEY_ENV", "CHATFT_ENDPOINT_URL")])
def test_half_of_url_and_key_is_an_error(monkeypatch, name, missing):
    monkeypatch.setenv(getattr(endpoint, name), "x")
    with pytest.raises(endpoint.EndpointError, match=f"{missing} is not set: set both"):
        endpoint.azure_connection("chat-ft-phi3", ml_client=FakeMLClient())


def test_azure_status_lists_deployments_and_traffic(capsys):
    client = live_client()
    assert endpoint.main(endpoint.parse_args(azure("status")), ml_client=client) == 0
    out = capsys.readouterr().out
    assert "chat-ft-phi3: https://chat-ft-phi3.westeurope.inference.ml.azure.com/score  (Succeeded)" in out
    assert "green  100%  chat-ft:7  Succeeded" in out


def test_azure_teardown_deletes_the_endpoint_and_keeps_the_model(capsys):
    client = live_client()
    assert endpoint.main(endpoint.parse_args(azure("teardown")), ml_client=client) == 0
    assert client.sequence() == ["online_deployments.list", "online_endpoints.begin_delete"]
    assert client.payloads("online_endpoints.begin_delete") == ["chat-ft-phi3"]
    assert "the registered model stays" in capsys.readouterr().out


def test_azure_teardown_with_delete_model_archives_every_version():
    client = live_client()
    client.model_versions["chat-ft"] = ["6", "7"]
    assert endpoint.main(endpoint.parse_args(azure("teardown", "--delete-model")), ml_client=client) == 0
    assert client.payloads("models.archive") == ["chat-ft:6", "chat-ft:7"]  # the model named by the deployment
    assert client.endpoints == {} and client.deployments == {}


def test_stop_is_local_only():
    with pytest.raises(endpoint.EndpointError, match="stop is local only"):
        endpoint.main(endpoint.parse_args(azure("stop")), ml_client=FakeMLClient())


def test_no_local_endpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(endpoint.EndpointError, match="no endpoint recorded in .*; deploy one with `make run`"):
        endpoint.main(endpoint.parse_args(["--home", str(tmp_path), "status"]))
    with pytest.raises(endpoint.EndpointError, match="endpoints/other/endpoint.json: no such endpoint"):
        endpoint.main(endpoint.parse_args(["--home", str(tmp_path), "ask", "hi", "--name", "other"]))


def _typed(*lines: str):
    answers = iter(lines)
    return lambda prompt="": next(answers)
