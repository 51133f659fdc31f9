"""An HTTP-transport fake for a real ``MLClient``: a simulation of Azure ML's REST API for offline tests.

The client, its serializers, its LRO pollers and its deserializers are the SDK's own; only the wire is fake. A
``requests`` adapter mounted on the transport's session answers each request from a route table: (method, path
regex) → a handler returning (status, headers, JSON body). Bodies follow the published shapes: the examples in
Azure/azure-rest-api-specs (specification/machinelearningservices/.../stable/2024-10-01/examples/Workspace/
ServerlessEndpoint/*.json, MarketplaceSubscription/*.json) with their placeholder "string" values replaced by
plausible ones, and, for fine-tuning jobs, the wire fields of the SDK's own REST model (arm_ml_service
``FineTuningJob`` / ``CustomModelFineTuning``). Any request no route expects raises ``UnexpectedRequest`` with the
method and URL, and is recorded: a test fails loudly instead of the fake inventing an answer.

Interim home: issue 10 builds the project's shared transport fake in tests/helpers/azure_transport.py; these routes
move there when it lands.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

SUBSCRIPTION = "00000000-1111-2222-3333-444444444444"
RESOURCE_GROUP = "rg-chatft-test"
WORKSPACE = "mlw-chatft-test"
WORKSPACE_GUID = "a1b2c3d4-0000-1111-2222-333344445555"
WS_PATH = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
SYSTEM_DATA = {
    "createdAt": "2026-12-01T12:00:00.000Z",
    "createdBy": "chatft-tests",
    "createdByType": "User",
    "lastModifiedAt": "2026-12-01T12:00:00.000Z",
    "lastModifiedBy": "chatft-tests",
    "lastModifiedByType": "User",
}

# On a 201 the ARM poller GETs the resource until it is terminal, after Retry-After seconds (30 s if absent).
RETRY_NOW = {"Retry-After": "0"}
Handler = Callable[["Call"], tuple[int, dict, object]]


class UnexpectedRequest(AssertionError):
    """The code under test sent a request no route answers."""


class FakeCredential:
    """A TokenCredential that never touches the network."""

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        return AccessToken("fake-token", 4_102_444_800)  # 2100-01-01

    def get_token_info(self, *scopes, options=None):
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo("fake-token", 4_102_444_800)


@dataclass
class Call:
    method: str
    path: str
    query: str
    body: object
    match: re.Match

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass
class Route:
    method: str
    pattern: re.Pattern
    handler: Handler


@dataclass
class FakeAzure:
    """The route table and what it saw. ``calls``: every answered request, in order, as ``Call``s."""

    routes: list[Route] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def route(self, method: str, path_regex: str, handler: Handler | tuple[int, dict, object]) -> None:
        """Add (or, for the same method and regex, replace) a route. Paths are matched in full, query aside."""
        answer = handler if callable(handler) else (lambda call, fixed=handler: fixed)
        pattern = re.compile(path_regex + "$", re.IGNORECASE)
        self.routes = [r for r in self.routes if not (r.method == method and r.pattern.pattern == pattern.pattern)]
        self.routes.append(Route(method, pattern, answer))

    def answer(self, method: str, url: str, body: bytes | None) -> tuple[int, dict, object]:
        parts = urlsplit(url)
        for route in self.routes:
            match = route.pattern.match(parts.path)
            if route.method == method and match:
                parsed = json.loads(body) if body else None
                call = Call(method, parts.path, parts.query, parsed, match)
                self.calls.append(call)
                return route.handler(call)
        self.unexpected.append(f"{method} {url}")
        raise UnexpectedRequest(f"fake Azure has no route for {method} {url}")

    def sent(self, method: str | None = None) -> list[str]:
        """'METHOD path' of every answered call (optionally one method only), in order."""
        return [str(c) for c in self.calls if method is None or c.method == method]

    def transport(self) -> RequestsTransport:
        session = requests.Session()
        adapter = _Adapter(self)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return RequestsTransport(session=session, session_owner=False)


class _Adapter(BaseAdapter):
    def __init__(self, fake: FakeAzure):
        super().__init__()
        self.fake = fake

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        body = request.body.encode() if isinstance(request.body, str) else request.body
        status, headers, payload = self.fake.answer(request.method, request.url, body)
        response = requests.Response()
        response.status_code = status
        response.reason = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 404: "Not Found"}.get(
            status, "Error"
        )
        content = b"" if payload is None else json.dumps(payload).encode()
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json", **headers})
        response._content = content
        response._content_consumed = True
        # azure-core reads a few attributes of the raw urllib3 response (content-length enforcement, streaming).
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(content), headers=response.headers, status=status, preload_content=False
        )
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def not_found(kind: str, name: str) -> tuple[int, dict, object]:
    """Azure ML's error envelope for a missing resource (an ARM ErrorResponse)."""
    return 404, {}, {"error": {"code": "UserError", "message": f"{kind} {name} not found"}}


def ml_client(fake: FakeAzure):
    """A real MLClient whose every request goes to ``fake``."""
    from azure.ai.ml import MLClient

    return MLClient(
        FakeCredential(),
        subscription_id=SUBSCRIPTION,
        resource_group_name=RESOURCE_GROUP,
        workspace_name=WORKSPACE,
        transport=fake.transport(),
    )


# ---- bodies in the REST API's shapes -----------------------------------------------------------------------------
def workspace_body(location: str) -> dict:
    """GET workspaces/{name} (Workspace/get.json shape, trimmed to what it always carries)."""
    return {
        "id": WS_PATH,
        "name": WORKSPACE,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": location,
        "kind": "Default",
        "identity": {"type": "SystemAssigned", "principalId": SUBSCRIPTION, "tenantId": SUBSCRIPTION},
        "sku": {"name": "Basic", "tier": "Basic"},
        "properties": {
            "friendlyName": WORKSPACE,
            "workspaceId": WORKSPACE_GUID,
            "discoveryUrl": f"https://{location}.api.azureml.ms/discovery",
            "mlFlowTrackingUri": f"azureml://{location}.api.azureml.ms/mlflow/v1.0{WS_PATH}",
            "provisioningState": "Succeeded",
            "publicNetworkAccess": "Enabled",
        },
        "systemData": SYSTEM_DATA,
    }


def marketplace_subscription_body(name: str, model_id: str, state: str = "Succeeded") -> dict:
    """MarketplaceSubscription/get.json and createOrUpdate.json's 200/201 body."""
    return {
        "id": f"{WS_PATH}/marketplaceSubscriptions/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/marketplaceSubscriptions",
        "properties": {
            "modelId": model_id,
            "marketplacePlan": {"publisherId": "test-publisher", "offerId": "test-offer", "planId": "test-plan"},
            "marketplaceSubscriptionStatus": "Subscribed",
            "provisioningState": state,
        },
        "systemData": SYSTEM_DATA,
    }


def serverless_endpoint_body(name: str, model_id: str, location: str, uri: str, state: str = "Succeeded") -> dict:
    """ServerlessEndpoint/get.json and createOrUpdate.json's 200/201 body."""
    return {
        "id": f"{WS_PATH}/serverlessEndpoints/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/serverlessEndpoints",
        "location": location,
        "kind": "Default",
        "sku": {"name": "Consumption"},
        "tags": {},
        "properties": {
            "modelSettings": {"modelId": model_id},
            "authMode": "Key",
            "inferenceEndpoint": {"uri": uri, "headers": {}},
            "provisioningState": state,
            "endpointState": "Online" if state == "Succeeded" else "Creating",
            "contentSafety": {"contentSafetyStatus": "Enabled"},
        },
        "systemData": SYSTEM_DATA,
    }


def finetuning_job_body(name: str, sent: dict, status: str) -> dict:
    """A fine-tuning job as the service returns it: what was PUT, plus the read-only fields (status, Studio)."""
    properties = json.loads(json.dumps(sent["properties"]))
    properties["status"] = status
    properties["services"] = {
        "Studio": {
            "jobServiceType": "Studio",
            "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_PATH}",
        }
    }
    return {
        "id": f"{WS_PATH}/jobs/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/jobs",
        "properties": properties,
        "systemData": SYSTEM_DATA,
    }


# ---- a small stateful service: the routes the serverless path uses ------------------------------------------------
# Where our 202 answers send the LRO poller (the spec examples elide these paths).
OPERATIONS_PATH = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/operationStatus"
REGISTRY_DISCOVERY_PATH = r"/registrymanagement/v1.0/registries/(?P<registry>[^/]+)/discovery"
REGISTRY_MODEL_PATH = (
    r"/mferp/managementfrontend/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft.MachineLearningServices"
    r"/registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"
)


@dataclass
class ServerlessService:
    """Workspace state behind the routes: data versions, jobs (each walking through ``job_states``), marketplace
    subscriptions, serverless endpoints. ``install`` adds the routes to ``fake``."""

    fake: FakeAzure
    location: str = "eastus2"
    scoring_uri: str = "http://127.0.0.1:9/unset"
    job_states: list[str] = field(default_factory=lambda: ["Queued", "Running", "Completed"])
    # The registry model's tags, as the catalog lists them (None: the model has no region tag).
    catalog_regions: str | None = None
    data: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    subscriptions: dict = field(default_factory=dict)
    endpoints: dict = field(default_factory=dict)
    keys: dict = field(default_factory=lambda: {"primaryKey": "fake-primary-key", "secondaryKey": "fake-secondary"})

    def install(self) -> ServerlessService:
        f = self.fake
        f.route("GET", WS_PATH, lambda call: (200, {}, workspace_body(self.location)))
        version = WS_PATH + r"/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"
        f.route("GET", version, self._get_data)
        f.route("PUT", version, self._put_data)
        job = WS_PATH + r"/jobs/(?P<name>[^/]+)"
        f.route("PUT", job, self._put_job)
        f.route("GET", job, self._get_job)
        sub = WS_PATH + r"/marketplaceSubscriptions/(?P<name>[^/]+)"
        f.route("GET", sub, lambda call: self._get(self.subscriptions, "marketplace subscription", call))
        f.route("PUT", sub, self._put_subscription)
        f.route("DELETE", sub, lambda call: self._delete(self.subscriptions, call))
        endpoint = WS_PATH + r"/serverlessEndpoints/(?P<name>[^/]+)"
        f.route("GET", endpoint, lambda call: self._get(self.endpoints, "serverless endpoint", call))
        f.route("PUT", endpoint, self._put_endpoint)
        f.route("DELETE", endpoint, lambda call: self._delete(self.endpoints, call))
        f.route("POST", endpoint + "/listKeys", lambda call: (200, {}, self.keys))
        f.route("GET", OPERATIONS_PATH + r"/[^/]+", (200, {}, {"status": "Succeeded"}))
        f.route("GET", OPERATIONS_PATH + r"/[^/]+/result", (204, {}, None))
        f.route("GET", REGISTRY_DISCOVERY_PATH, self._discovery)
        f.route("GET", REGISTRY_MODEL_PATH, self._registry_model)
        return self

    # each handler answers as the REST API documents (status codes and bodies of the spec examples)
    def _get(self, store: dict, kind: str, call: Call):
        name = call.match["name"]
        return (200, {}, store[name]) if name in store else not_found(kind, name)

    def _delete(self, store: dict, call: Call):
        """delete.json: 202 with Azure-AsyncOperation and Location (the spec elides their paths; these are ours),
        or 204 when there is nothing to delete."""
        if store.pop(call.match["name"], None) is None:
            return 204, {}, None
        operation = f"https://management.azure.com{OPERATIONS_PATH}/op-{len(self.fake.calls)}"
        return 202, {"Azure-AsyncOperation": operation, "Location": operation + "/result", "Retry-After": "0"}, None

    def _get_data(self, call: Call):
        key = (call.match["name"], call.match["version"])
        return (200, {}, self.data[key]) if key in self.data else not_found("data", f"{key[0]}:{key[1]}")

    def _put_data(self, call: Call):
        name, version = call.match["name"], call.match["version"]
        body = {
            "id": f"{WS_PATH}/data/{name}/versions/{version}",
            "name": version,
            "type": "Microsoft.MachineLearningServices/workspaces/data/versions",
            "properties": call.body["properties"],
            "systemData": SYSTEM_DATA,
        }
        self.data[(name, version)] = body
        return 201, {}, body

    def _put_job(self, call: Call):
        name = call.match["name"]
        self.jobs[name] = {"sent": call.body, "polls": 0}
        return 201, {}, finetuning_job_body(name, call.body, "NotStarted")

    def _get_job(self, call: Call):
        name = call.match["name"]
        if name not in self.jobs:
            return not_found("job", name)
        job = self.jobs[name]
        state = self.job_states[min(job["polls"], len(self.job_states) - 1)]
        job["polls"] += 1
        return 200, {}, finetuning_job_body(name, job["sent"], state)

    def _put_subscription(self, call: Call):
        name = call.match["name"]
        self.subscriptions[name] = marketplace_subscription_body(name, call.body["properties"]["modelId"])
        return 201, RETRY_NOW, self.subscriptions[name]

    def _put_endpoint(self, call: Call):
        name = call.match["name"]
        model_id = call.body["properties"]["modelSettings"]["modelId"]
        self.endpoints[name] = serverless_endpoint_body(name, model_id, call.body.get("location"), self.scoring_uri)
        return 201, RETRY_NOW, self.endpoints[name]

    def _discovery(self, call: Call):
        # RegistryDiscoveryDto, as azure-ai-ml's registry_discovery client deserializes it.
        return (
            200,
            {},
            {
                "registryName": call.match["registry"],
                "primaryRegion": "eastus",
                "regions": ["eastus"],
                "subscriptionId": SUBSCRIPTION,
                "resourceGroup": "registry-builtin-prod-eastus-01",
                "primaryRegionResourceProviderUri": "https://cert-eastus.experiments.azureml.net/",
            },
        )

    def _registry_model(self, call: Call):
        tags = {"task": "chat-completion"}
        if self.catalog_regions is not None:
            tags["maas-finetuning-deploy-regions"] = self.catalog_regions
        name, version = call.match["name"], call.match["version"]
        return (
            200,
            {},
            {
                "id": f"azureml://registries/{call.match['registry']}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/registries/models/versions",
                # ModelVersionProperties: an MLflow model carries its flavors (the SDK's deserializer reads them).
                "properties": {
                    "modelType": "mlflow_model",
                    "modelUri": f"azureml://registries/{call.match['registry']}/models/{name}/versions/{version}",
                    "flavors": {
                        "python_function": {"data": {"loader_module": "mlflow.transformers"}},
                        "transformers": {"data": {"task": "text-generation"}},
                    },
                    "tags": tags,
                    "properties": {},
                },
                "systemData": SYSTEM_DATA,
            },
        )
