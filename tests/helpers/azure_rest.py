"""The vocabulary of the Azure ML REST simulation (tests/helpers/azure_transport.py): the test workspace's ids, the
ARM resource types, the recorded request and the reply, ARM's error body, a credential that never contacts Entra ID,
and the REST spec example fixtures of tests/fixtures/azure_rest/."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "azure_rest"

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "rg-test"
WORKSPACE = "mlw-test"
REGION = "eastus2"
STORAGE_ACCOUNT = "stmlwtest"
ARM = "https://management.azure.com"
WORKSPACE_ID = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
LOCATION_ID = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/locations/{REGION}"
SYSTEM_DATA = {
    "createdAt": "2026-12-01T12:00:00.000Z",
    "createdBy": "tester@example.com",
    "createdByType": "User",
    "lastModifiedAt": "2026-12-01T12:00:00.000Z",
    "lastModifiedBy": "tester@example.com",
    "lastModifiedByType": "User",
}
# ARM resource types of what the workspace holds, by the path segment the SDK PUTs them under.
RESOURCE_TYPES = {
    "environments": "Microsoft.MachineLearningServices/workspaces/environments/versions",
    "data": "Microsoft.MachineLearningServices/workspaces/data/versions",
    "components": "Microsoft.MachineLearningServices/workspaces/components/versions",
    "codes": "Microsoft.MachineLearningServices/workspaces/codes/versions",
    "models": "Microsoft.MachineLearningServices/workspaces/models/versions",
    "jobs": "Microsoft.MachineLearningServices/workspaces/jobs",
    "schedules": "Microsoft.MachineLearningServices/workspaces/schedules",
    "onlineEndpoints": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
    "deployments": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
}
LONG_RUNNING = ("schedules", "onlineEndpoints", "deployments")  # PUTs the spec marks x-ms-long-running-operation


class UnexpectedRequest(AssertionError):
    """The code under test sent a request the simulation has no answer for."""


class FakeCredential:
    """A TokenCredential that never contacts Entra ID. Its tokens are unsigned JWTs with the claims the SDK reads
    (``aud`` = the resource of the scope asked for, ``tid``, ``oid``), as an Entra access token carries them."""

    tenant_id = "00000000-aaaa-bbbb-cccc-dddddddddddd"

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        import jwt

        expires = int(time.time()) + 3600
        audience = scopes[0].removesuffix("/.default") if scopes else ""
        claims = {"aud": audience, "tid": self.tenant_id, "oid": "00000000-0000-0000-0000-00000000a11c", "exp": expires}
        return AccessToken(jwt.encode(claims, key=None, algorithm="none"), expires)


def fixture(name: str) -> dict:
    """A JSON file of tests/fixtures/azure_rest/, without its ``_source`` note."""
    body = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    body.pop("_source", None)
    return body


@dataclass
class Recorded:
    method: str
    url: str
    path: str  # without the host and query; the workspace prefix is shortened to "{ws}"
    api_version: str | None
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the JSON body decoded, raw bytes otherwise, None when empty
    status: int | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list → JSON; bytes as is
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["Recorded", re.Match], Reply]


def arm_error(status: int, code: str, message: str) -> Reply:
    """ARM's error body (ErrorResponse in the spec's common types)."""
    return Reply(status, {"error": {"code": code, "message": message}})
