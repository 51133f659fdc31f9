"""The serverless endpoint after a submission: teardown, and make chat / ask / status / teardown TARGET=serverless,
against the Azure REST simulation with the serverless routes."""

from __future__ import annotations

from pipelines.azure import serverless
from pipelines.settings import load_settings
from tests.helpers.serverless_routes import marketplace_subscription, serverless_endpoint
from tests.helpers.serverless_service import PRESET


# ---- teardown --------------------------------------------------------------------------------------------------
def test_teardown_deletes_the_endpoint_and_on_request_the_subscription(routes):
    routes.add(serverless_endpoint("chat-ft-phi3-maas", "m", "eastus2", "http://127.0.0.1:9"))
    routes.add(marketplace_subscription("phi-3-mini-4k-instruct-sub", "m"))
    settings = load_settings(PRESET)
    client = routes.sim.client()

    assert serverless.teardown(settings, delete_subscription=False, ml_client=client) == 0
    assert routes.stored("serverlessEndpoints") == {} and "phi-3-mini-4k-instruct-sub" in routes.stored(
        "marketplaceSubscriptions"
    )
    assert serverless.teardown(settings, delete_subscription=True, ml_client=client) == 0
    assert routes.stored("marketplaceSubscriptions") == {}
    assert routes.sim.sent("DELETE", "/serverlessEndpoints/chat-ft-phi3-maas$")[0].status == 202


# ---- make chat / ask / status / teardown TARGET=serverless -----------------------------------------------------
def test_ask_target_serverless_finds_the_endpoint_in_the_workspace(routes, chat_server, capsys):
    from pipelines import endpoint as endpoint_cli

    routes.add(serverless_endpoint("chat-ft-phi3-maas", "m", "eastus2", chat_server.url))
    args = endpoint_cli.parse_args(["--target", "serverless", "ask", "Is it on?", "--max_new_tokens", "32"])

    assert endpoint_cli.main(args, ml_client=routes.sim.client()) == 0
    assert capsys.readouterr().out.strip() == "Unplug it for 30 seconds."
    (request,) = chat_server.requests
    assert request["body"] == {"messages": [{"role": "user", "content": "Is it on?"}], "max_tokens": 32}
    assert request["auth"] == "Bearer sim-primary-key"

    status = endpoint_cli.parse_args(["--target", "serverless", "status"])
    assert endpoint_cli.main(status, ml_client=routes.sim.client()) == 0
    teardown = endpoint_cli.parse_args(["--target", "serverless", "teardown"])
    assert endpoint_cli.main(teardown, ml_client=routes.sim.client()) == 0
    assert routes.stored("serverlessEndpoints") == {}


def test_chat_target_serverless_takes_url_and_key_from_the_environment(chat_server, monkeypatch):
    from pipelines import endpoint as endpoint_cli

    monkeypatch.setenv("CHATFT_SERVERLESS_URL", chat_server.url)
    monkeypatch.setenv("CHATFT_SERVERLESS_KEY", "env-key")
    connection = endpoint_cli.serverless_connection("any")
    assert endpoint_cli.generate(connection, [{"role": "user", "content": "hi"}], {}) == "Unplug it for 30 seconds."
    assert chat_server.requests[0]["auth"] == "Bearer env-key"
