"""The Azure credential for GitHub Actions: a fresh GitHub OIDC token for every Entra token it acquires.

``azure/login`` with OpenID Connect exchanges one GitHub ID token once, and that login cannot be refreshed
(Azure/login#180): the ID token lives minutes, the Entra token about an hour, and then every call fails with
AADSTS700024. A pipeline followed for hours outlives it. azure-identity's ``ClientAssertionCredential`` calls its
``func`` "every time it acquires a new token" (its docstring); here ``func`` asks the job's token endpoint for a new
ID token (``ACTIONS_ID_TOKEN_REQUEST_URL`` with ``audience=api://AzureADTokenExchange``, authorised by
``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, which GitHub sets for a job with ``permissions: id-token: write``), so the
credential keeps working for as long as the job runs.

``credential_from_env()`` returns None outside GitHub Actions; ``workspace_client()`` then uses
``DefaultAzureCredential`` (az login, a managed identity).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Mapping
from urllib.parse import urlencode

from chatft.errors import ChatftError

AUDIENCE = "api://AzureADTokenExchange"  # what an Entra federated credential accepts by default
REQUEST_URL, REQUEST_TOKEN = "ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
IDENTITY = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID")


class GitHubTokenError(ChatftError, RuntimeError):
    """The job's token endpoint gave no ID token; the message says what to check."""


def fetch_id_token(env: Mapping[str, str] = os.environ, timeout: float = 30) -> str:
    """A new GitHub OIDC ID token for Entra ID, from the running job's token endpoint."""
    separator = "&" if "?" in env[REQUEST_URL] else "?"
    request = urllib.request.Request(
        env[REQUEST_URL] + separator + urlencode({"audience": AUDIENCE}),
        headers={"Authorization": f"Bearer {env[REQUEST_TOKEN]}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors; a non-JSON body a ValueError
        raise GitHubTokenError(
            f"GitHub's OIDC token endpoint ({REQUEST_URL}) gave no token: {err}. Does the job have "
            "`permissions: id-token: write`?"
        ) from err
    token = body.get("value") if isinstance(body, dict) else None
    if not token:
        raise GitHubTokenError(f"GitHub's OIDC token endpoint answered without a `value`: {str(body)[:200]}")
    return token


def in_github_actions(env: Mapping[str, str] = os.environ) -> bool:
    """A job that may request ID tokens, with the identity to exchange them for."""
    return all(env.get(name) for name in (REQUEST_URL, REQUEST_TOKEN, *IDENTITY))


def credential_from_env(env: Mapping[str, str] = os.environ, **kwargs):
    """A ``ClientAssertionCredential`` that re-fetches the ID token, or None when not in such a job. ``kwargs``
    go to the credential (the tests pass a ``transport``)."""
    if not in_github_actions(env):
        return None
    from azure.identity import ClientAssertionCredential

    env = dict(env)  # the job's values, fixed when the credential is made
    return ClientAssertionCredential(
        tenant_id=env["AZURE_TENANT_ID"], client_id=env["AZURE_CLIENT_ID"], func=lambda: fetch_id_token(env), **kwargs
    )
