"""The GitHub Actions credential (pipelines/github_oidc.py): a new GitHub ID token for every Entra token.

Both ends are simulations. GitHub's job token endpoint is a real HTTP server on loopback answering as GitHub
documents it (GET ``$ACTIONS_ID_TOKEN_REQUEST_URL&audience=...`` with ``Authorization: Bearer
$ACTIONS_ID_TOKEN_REQUEST_TOKEN`` → ``{"count": ..., "value": "<JWT>"}``). Entra ID's token endpoint is a fake
azure-core transport under azure-identity's real ``ClientAssertionCredential``, answering the client-credentials
response the Microsoft identity platform documents (``token_type``, ``expires_in``, ``access_token``).
"""

from __future__ import annotations

import json
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from azure.core.pipeline.transport import HttpResponse

from pipelines import github_oidc
from tests.helpers.http_stubs import JsonHandler, serving
from tests.helpers.offline_transport import InProcessTransport

TENANT, CLIENT = "00000000-0000-0000-0000-0000000000aa", "00000000-0000-0000-0000-0000000000bb"
REQUEST_TOKEN = "runtime-request-token"


@pytest.fixture
def github():
    """GitHub's per-job OIDC token endpoint: each GET issues a new ID token (id-token-1, id-token-2, ...)."""
    seen: list[dict] = []

    class Handler(JsonHandler):
        def do_GET(self):
            url = urlparse(self.path)
            seen.append({"path": url.path, "query": parse_qs(url.query), "auth": self.headers.get("Authorization")})
            if self.headers.get("Authorization") != f"Bearer {REQUEST_TOKEN}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_json({"count": 1, "value": f"id-token-{len(seen)}"})

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        # The shape GitHub gives the URL: a query string already there, the audience appended to it.
        url = f"http://127.0.0.1:{server.server_port}/_apis/distributedtask/hubs/Actions/plans/p/jobs/j/idtoken?api-version=2.0"
        env = {
            "ACTIONS_ID_TOKEN_REQUEST_URL": url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": REQUEST_TOKEN,
            "AZURE_CLIENT_ID": CLIENT,
            "AZURE_TENANT_ID": TENANT,
        }
        yield env, seen


class _Json(HttpResponse):
    def __init__(self, request, body: dict):
        super().__init__(request, None)
        self.status_code, self.reason, self._body = 200, "OK", json.dumps(body).encode()
        self.headers = {"Content-Type": "application/json; charset=utf-8"}
        self.content_type = self.headers["Content-Type"]

    def body(self) -> bytes:
        return self._body


class EntraTransport(InProcessTransport):
    """Entra ID's v2.0 token endpoint; access tokens live ``lifetime`` seconds. Anything else fails the test."""

    def __init__(self, lifetime: int):
        self.lifetime, self.assertions = lifetime, []

    def send(self, request, **kwargs):
        assert (
            request.method == "POST" and request.url == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
        )
        form = request.data if isinstance(request.data, dict) else parse_qs(request.body.decode())
        form = {k: v[0] if isinstance(v, list) else v for k, v in form.items()}
        assert form["grant_type"] == "client_credentials" and form["client_id"] == CLIENT
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        self.assertions.append(form["client_assertion"])
        n = len(self.assertions)
        return _Json(
            request,
            {
                "token_type": "Bearer",
                "expires_in": self.lifetime,
                "ext_expires_in": self.lifetime,
                "access_token": f"access-token-{n}",
            },
        )


def test_every_entra_token_is_bought_with_a_new_github_id_token(github):
    env, seen = github
    # Access tokens that expire after 1 s: each call below is, for the credential, "an hour later".
    entra = EntraTransport(lifetime=1)
    credential = github_oidc.credential_from_env(env, transport=entra)
    tokens = []
    for _ in range(3):
        tokens.append(credential.get_token("https://management.azure.com/.default").token)
        time.sleep(2.1)  # past the expiry (azure-identity keeps whole seconds)

    assert tokens == ["access-token-1", "access-token-2", "access-token-3"]
    assert entra.assertions == ["id-token-1", "id-token-2", "id-token-3"], "never the same, expired, ID token twice"
    assert [s["query"] for s in seen] == [{"api-version": ["2.0"], "audience": ["api://AzureADTokenExchange"]}] * 3
    assert {s["auth"] for s in seen} == {f"Bearer {REQUEST_TOKEN}"}


def test_a_valid_entra_token_is_reused_without_asking_github(github):
    env, seen = github
    entra = EntraTransport(lifetime=3599)
    credential = github_oidc.credential_from_env(env, transport=entra)
    for _ in range(3):
        credential.get_token("https://management.azure.com/.default")
    assert len(seen) == 1 and entra.assertions == ["id-token-1"]


def test_outside_github_actions_there_is_no_such_credential(github):
    env, _ = github
    for missing in github_oidc.REQUEST_URL, github_oidc.REQUEST_TOKEN, "AZURE_CLIENT_ID", "AZURE_TENANT_ID":
        assert github_oidc.credential_from_env({k: v for k, v in env.items() if k != missing}) is None


def test_a_refused_token_request_says_what_to_check(github):
    env, _ = github
    with pytest.raises(github_oidc.GitHubTokenError, match="id-token: write"):
        github_oidc.fetch_id_token(env | {"ACTIONS_ID_TOKEN_REQUEST_TOKEN": "wrong"})


def test_the_workspace_client_signs_in_this_way_in_github_actions(github, monkeypatch, tmp_path):
    from azure.identity import ClientAssertionCredential

    from pipelines.azure import client as azure_client

    env, _ = github
    for name, value in (
        env.items()
        | {"AZURE_SUBSCRIPTION_ID": "0000", "AZURE_RESOURCE_GROUP": "rg", "AZUREML_WORKSPACE_NAME": "ws"}.items()
    ):
        monkeypatch.setenv(name, value)
    client = azure_client.workspace_client(
        project_root=github_oidc.__file__ and __import__("pathlib").Path("/nonexistent")
    )
    assert isinstance(client._credential, ClientAssertionCredential)
