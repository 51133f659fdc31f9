"""pipelines.endpoint against an Azure ML endpoint, offline: a real MLClient over the simulated Azure ML REST API
for the control plane (tests/helpers/azure_endpoints.py) and a loopback server that checks the key as a managed
endpoint does (both simulations: no Azure is reached).

The local half (status, ask, chat, stop, teardown against real servers) is in tests/components/test_deploy_endpoint.py.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import endpoint, endpoint_client
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.helpers.azure_endpoints import EndpointSimulation, simulated_endpoints
from tests.helpers.http_stubs import send_json, serving

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
        send_json(self, status, reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def scoring_url():
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _KeyedEndpoint)) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}/score"


@pytest.fixture(autouse=True)
def no_endpoint_env(monkeypatch):
    monkeypatch.delenv(endpoint.URL_ENV, raising=False)
    monkeypatch.delenv(endpoint.KEY_ENV, raising=False)


def azure(*argv: str) -> list[str]:
    return ["--target", "azure", *argv]


@pytest.fixture
def endpoint_sim(monkeypatch):
    yield from simulated_endpoints(monkeypatch)


def live(sim: EndpointSimulation, scoring_url: str | None = None) -> EndpointSimulation:
    """The azure preset's endpoint, live on green with chat-ft:7; its scoring URI is ``scoring_url`` if given."""
    sim.key = KEY
    if scoring_url:
        sim.scoring_uris["chat-ft-phi3"] = scoring_url
    return sim.with_live("chat-ft-phi3", "green", "chat-ft:7")


def test_azure_endpoint_name_comes_from_the_azure_preset():
    preset = load_settings(PROJECT_ROOT / "pipelines/config/azure.yaml").step("deploy_endpoint")["endpoint_name"]
    assert endpoint_client.configured("deploy_endpoint", "endpoint_name", "azure") == preset
    assert endpoint_client.configured("register_model", "model_name", "local") == "chat-ft"  # the component default


def test_chat_with_the_workspace_endpoint_keeps_history_and_never_prints_the_key(
    scoring_url, endpoint_sim, monkeypatch, capsys
):
    sim = live(endpoint_sim, scoring_url)
    monkeypatch.setattr("builtins.input", _typed("hello", "and then?", "/exit"))
    assert endpoint.main(endpoint.parse_args(azure("chat")), ml_client=sim.client()) == 0
    out, err = capsys.readouterr()
    assert f"Chatting with chat-ft-phi3 (Azure ML) at {scoring_url}" in out
    assert "bot> reply to 'hello' after 0 turns" in out
    assert "bot> reply to 'and then?' after 2 turns" in out  # the history went along
    # The scoring URI and the key come from the workspace (the SDK reads the endpoint, then listKeys); nothing changes.
    assert sim.sequence()[0] == "GET {ws}/onlineEndpoints/chat-ft-phi3"
    assert sim.sequence()[-1] == "POST {ws}/onlineEndpoints/chat-ft-phi3/listKeys"
    assert {r.method for r in sim.requests[:-1]} == {"GET"}
    assert KEY not in out + err


def test_ask_with_url_and_key_from_the_environment_needs_no_workspace(scoring_url, endpoint_sim, monkeypatch, capsys):
    monkeypatch.setenv(endpoint.URL_ENV, scoring_url)
    monkeypatch.setenv(endpoint.KEY_ENV, KEY)
    assert endpoint.main(endpoint.parse_args(azure("ask", "Is it on?")), ml_client=endpoint_sim.client()) == 0
    assert capsys.readouterr().out == "reply to 'Is it on?' after 0 turns\n"
    assert endpoint_sim.requests == []


def test_a_wrong_key_is_reported_without_the_key(scoring_url, monkeypatch, capsys):
    monkeypatch.setenv(endpoint.URL_ENV, scoring_url)
    monkeypatch.setenv(endpoint.KEY_ENV, "wrong-key-also-secret")
    with pytest.raises(endpoint.EndpointError, match="HTTP 401: invalid key") as raised:
        endpoint.main(endpoint.parse_args(azure("ask", "hi")))
    out, err = capsys.readouterr()
    assert "wrong-key-also-secret" not in str(raised.value) + out + err


@pytest.mark.parametrize(("name", "missing"), [("URL_ENV", "CHATFT_ENDPOINT_KEY"), ("KEY_ENV", "CHATFT_ENDPOINT_URL")])
def test_half_of_url_and_key_is_an_error(endpoint_sim, monkeypatch, name, missing):
    monkeypatch.setenv(getattr(endpoint, name), "x")
    with pytest.raises(endpoint.EndpointError, match=f"{missing} is not set: set both"):
        endpoint.azure_connection("chat-ft-phi3", ml_client=endpoint_sim.client())
    assert endpoint_sim.requests == []


def test_azure_status_lists_deployments_and_traffic(endpoint_sim, capsys):
    sim = live(endpoint_sim)
    assert endpoint.main(endpoint.parse_args(azure("status")), ml_client=sim.client()) == 0
    out = capsys.readouterr().out
    assert "chat-ft-phi3: https://chat-ft-phi3.eastus2.inference.ml.azure.com/score  (Succeeded)" in out
    assert "green  100%  chat-ft:7  Succeeded" in out


def test_azure_teardown_deletes_the_endpoint_and_keeps_the_model(endpoint_sim, capsys):
    sim = live(endpoint_sim)
    assert endpoint.main(endpoint.parse_args(azure("teardown")), ml_client=sim.client()) == 0
    assert [str(r) for r in sim.requests if r.method != "GET" or "/onlineEndpoints/" in r.path] == [
        "GET {ws}/onlineEndpoints/chat-ft-phi3/deployments",  # which model the deployments serve
        "DELETE {ws}/onlineEndpoints/chat-ft-phi3",
    ]
    assert sim.get("onlineEndpoints", "chat-ft-phi3") is None
    assert sim.get("onlineEndpoints/chat-ft-phi3/deployments", "green") is None
    assert "the registered model stays" in capsys.readouterr().out


def registered_model(version: str) -> dict:
    """A model version's properties in the shape of the spec's ModelVersion/get.json example (an MLflow model)."""
    return {
        "description": "chat model",
        "flavors": {"python_function": {"data": {"loader_module": "mlflow.pyfunc.model"}}},
        "modelType": "mlflow_model",
        "modelUri": f"azureml://jobs/job-{version}/outputs/artifacts/paths/model/",
        "isArchived": False,
        "isAnonymous": False,
        "properties": {},
        "tags": {},
    }


def test_azure_teardown_with_delete_model_archives_every_version(endpoint_sim):
    sim = live(endpoint_sim)
    for version in ("6", "7"):
        sim.add("models", "chat-ft", version, registered_model(version))
    assert endpoint.main(endpoint.parse_args(azure("teardown", "--delete-model")), ml_client=sim.client()) == 0
    # The model named by the deployment: every version archived (azure-ai-ml has no hard delete for versions).
    archived = {
        body["name"] if "name" in body else r.path.rsplit("/", 1)[1]
        for r in sim.sent("PUT", r"/models/chat-ft/versions/")
        for body in [r.body]
    }
    assert archived == {"6", "7"}
    assert all(body["properties"]["isArchived"] is True for body in sim.puts(r"/models/chat-ft/versions/"))
    assert sim.get("onlineEndpoints", "chat-ft-phi3") is None


def test_stop_is_local_only(endpoint_sim):
    with pytest.raises(endpoint.EndpointError, match="stop is local only"):
        endpoint.main(endpoint.parse_args(azure("stop")), ml_client=endpoint_sim.client())
    assert endpoint_sim.requests == []


def test_no_local_endpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(endpoint.EndpointError, match="no endpoint recorded in .*; deploy one with `make run`"):
        endpoint.main(endpoint.parse_args(["--home", str(tmp_path), "status"]))
    with pytest.raises(endpoint.EndpointError, match="endpoints/other/endpoint.json: no such endpoint"):
        endpoint.main(endpoint.parse_args(["--home", str(tmp_path), "ask", "hi", "--name", "other"]))


def _typed(*lines: str):
    answers = iter(lines)
    return lambda prompt="": next(answers)
