"""The online-endpoint half of the Azure ML REST simulation (tests/helpers/azure_transport.py): a simulation.

``EndpointSimulation`` adds what ``deploy_endpoint`` and ``pipelines/endpoint.py`` send beyond the workspace's assets:
deployments under an endpoint, the endpoint's keys and its scoring URI. Shapes, from the REST API specification's
examples (Azure/azure-rest-api-specs, ``specification/machinelearningservices/resource-manager/
Microsoft.MachineLearningServices/stable/``):
  * an endpoint as ``OnlineEndpoint/get.json`` (2022-10-01) answers it: what the SDK PUT, plus the read-only
    ``scoringUri`` and ``swaggerUri`` the service fills in;
  * deployments as ``OnlineDeployment/ManagedOnlineDeployment/createOrUpdate.json`` (2024-04-01): a long-running
    PUT (201 + ``Azure-AsyncOperation``), GET, DELETE (202 + ``Location``), and ``OnlineDeployment/list.json``'s
    ``{"value": [...]}``;
  * ``POST .../listKeys`` as ``OnlineEndpoint/listKeys.json``: ``{"primaryKey", "secondaryKey"}``;
  * a failed provisioning as ARM's Azure-AsyncOperation status body, ``status: Failed`` with an ``error``.
The scoring URI answers from ``scoring_replies`` per deployment (the ``azureml-model-deployment`` request header the
SDK sends, as the endpoint routes by it), in order, the last one repeating; a reply is a string body (200) or a
``(status, body)`` pair. What the real endpoint would answer is the point of the smoke test, so tests set it.
"""

from __future__ import annotations

import copy
import re
import urllib.parse

from tests.helpers.azure_transport import REGION, WORKSPACE_ID, AzureRestSimulation, Recorded, Reply, arm_error

KEY = "k3y-never-printed"


def scoring_host(endpoint: str) -> str:
    return f"{endpoint}.{REGION}.inference.ml.azure.com"


class EndpointSimulation(AzureRestSimulation):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scoring_replies: dict[str, list] = {}  # deployment -> replies, in order; the last one repeats
        self.default_reply: object = '{"output": "Hello!"}'
        self.failing_deployments: dict[str, str] = {}  # deployment -> provisioning error message
        self.key = KEY
        # endpoint -> the scoringUri the service reports, e.g. a loopback server standing in for the endpoint
        self.scoring_uris: dict[str, str] = {}

    # ---- what tests use ----------------------------------------------------------------------------------------
    def with_live(self, endpoint: str, deployment: str, model: str) -> EndpointSimulation:
        """An endpoint that already sends 100% of traffic to ``deployment`` serving ``model`` (name:version)."""
        self._store_endpoint(
            endpoint, {"properties": {"authMode": "Key", "traffic": {deployment: 100}, "properties": {}}}
        )
        name, version = model.split(":")
        path = f"{WORKSPACE_ID}/onlineEndpoints/{endpoint}/deployments/{deployment}"
        self._store(
            path,
            "deployments",
            {
                "location": REGION,
                "tags": {"model": model},
                "sku": {"name": "Default", "capacity": 1},
                "properties": {
                    "endpointComputeType": "Managed",
                    "instanceType": "Standard_NC24ads_A100_v4",
                    "model": f"{WORKSPACE_ID}/models/{name}/versions/{version}",
                    "scaleSettings": {"scaleType": "Default"},
                    "properties": {},
                },
            },
        )
        return self

    def puts(self, pattern: str) -> list[dict]:
        """The JSON bodies the SDK PUT to paths matching ``pattern``, in order."""
        return [r.body for r in self.sent("PUT", pattern)]

    def scored(self) -> list[tuple[str | None, dict]]:
        """(deployment header, request body) of every scoring call, in order."""
        return [(r.headers.get("azureml-model-deployment"), r.body) for r in self.requests if r.path.endswith("/score")]

    # ---- routes ------------------------------------------------------------------------------------------------
    def _add_routes(self) -> None:
        ws = re.escape(WORKSPACE_ID)
        endpoint = rf"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)"
        deployment = rf"{endpoint}/(?P<kind>deployments)/(?P<name>[^/]+)"
        # Ahead of the generic routes: an endpoint PUT gets the service's read-only fields.
        self._route("PUT", rf"{ws}/(?P<kind>onlineEndpoints)/(?P<name>[^/]+)", self._put_endpoint)
        self._route("DELETE", rf"{ws}/(?P<kind>onlineEndpoints)/(?P<name>[^/]+)", self._delete_endpoint)
        self._route("GET", deployment, self._get)
        self._route("PUT", deployment, self._put_deployment)
        self._route("DELETE", deployment, self._delete)
        self._route("GET", rf"{endpoint}/deployments", self._list_deployments)
        self._route("POST", rf"{endpoint}/listKeys", self._list_keys)
        self._route("POST", rf"//(?P<endpoint>[^.]+)\.{REGION}\.inference\.ml\.azure\.com/score", self._score)
        super()._add_routes()

    def _store_endpoint(self, name: str, body: dict) -> dict:
        stored = self._store(f"{WORKSPACE_ID}/onlineEndpoints/{name}", "onlineEndpoints", body)
        stored.setdefault("location", REGION)
        stored["properties"].update(
            scoringUri=self.scoring_uris.get(name, f"https://{scoring_host(name)}/score"),
            swaggerUri=f"https://{scoring_host(name)}/swagger.json",
        )
        return stored

    def _delete_endpoint(self, record: Recorded, match: re.Match) -> Reply:
        """Deleting an endpoint deletes its deployments with it, as the service does."""
        prefix = urllib.parse.urlsplit(record.url).path.lower() + "/deployments/"
        for path in [p for p in self.resources if p.startswith(prefix)]:
            del self.resources[path]
        return self._delete(record, match)

    def _put_endpoint(self, record: Recorded, match: re.Match) -> Reply:
        reply = self._put(record, match)
        stored = self._store_endpoint(match["name"], reply.body)
        return Reply(reply.status, copy.deepcopy(stored), reply.headers)

    def _put_deployment(self, record: Recorded, match: re.Match) -> Reply:
        endpoint = f"{WORKSPACE_ID}/onlineEndpoints/{match['endpoint']}".lower()
        if endpoint not in self.resources:
            return arm_error(404, "UserError", f"Could not find the endpoint {match['endpoint']}.")
        reply = self._put(record, match)
        # What the service fills in when the body leaves it out (the createOrUpdate example's response has it).
        reply.body["properties"].setdefault("scaleSettings", {"scaleType": "Default"})
        self.resources[urllib.parse.urlsplit(record.url).path.lower()]["properties"].setdefault(
            "scaleSettings", {"scaleType": "Default"}
        )
        error = self.failing_deployments.get(match["name"])
        if error:
            op = urllib.parse.urlsplit(reply.headers["Azure-AsyncOperation"]).path.rsplit("/", 1)[1]
            self._operations[op]["error"] = error
            reply.body["properties"]["provisioningState"] = "Creating"
        return reply

    def _poll(self, record: Recorded, match: re.Match) -> Reply:
        operation = self._operations.get(match["op"])
        if operation is not None and operation.get("error") and operation["left"] <= 0:
            path = operation["path"].lower()
            if path in self.resources:
                self.resources[path]["properties"]["provisioningState"] = "Failed"
            body = {
                "id": record.path,
                "name": match["op"],
                "status": "Failed",
                "error": {"code": "ResourceNotReady", "message": operation["error"]},
            }
            return Reply(200, body, {"retry-after-ms": "1"})
        return super()._poll(record, match)

    def _list_deployments(self, record: Recorded, match: re.Match) -> Reply:
        prefix = urllib.parse.urlsplit(record.url).path.lower() + "/"
        found = [
            body for path, body in self.resources.items() if path.startswith(prefix) and "/" not in path[len(prefix) :]
        ]
        return Reply(200, {"value": found})

    def _list_keys(self, record: Recorded, match: re.Match) -> Reply:
        if f"{WORKSPACE_ID}/onlineEndpoints/{match['endpoint']}".lower() not in self.resources:
            return self._not_found(record)
        return Reply(200, {"primaryKey": self.key, "secondaryKey": "unused-secondary"})

    def _score(self, record: Recorded, match: re.Match) -> Reply:
        deployment = record.headers.get("azureml-model-deployment")
        replies = self.scoring_replies.get(deployment)
        reply = (replies.pop(0) if len(replies) > 1 else replies[0]) if replies else self.default_reply
        status, body = reply if isinstance(reply, tuple) else (200, reply)
        headers = {"azureml-model-deployment": deployment or "", "Content-Type": "application/json"}
        return Reply(status, body.encode() if isinstance(body, str) else body, headers)


def story(sim: AzureRestSimulation) -> list[str]:
    """What changed the endpoint, in order: its PUTs and DELETEs and the scoring calls (with the deployment they
    were addressed to), without the SDK's own reads, polls and uploads."""
    steps = []
    for r in sim.requests:
        if r.path.endswith("/score"):
            steps.append(f"score {r.headers.get('azureml-model-deployment')}")
        elif r.method in ("PUT", "DELETE") and "/onlineEndpoints/" in r.path:
            steps.append(f"{r.method} {r.path.split('/onlineEndpoints/', 1)[1]}")
    return steps


def simulated_endpoints(monkeypatch):
    """For a test module's fixture (``yield from simulated_endpoints(monkeypatch)``): the simulated workspace with
    online endpoints, blob uploads included; fails the test on any request it had no answer for."""
    sim = EndpointSimulation()
    sim.route_storage(monkeypatch)
    yield sim
    assert not sim.unexpected, f"requests the simulation did not expect: {[str(r) for r in sim.unexpected]}"
