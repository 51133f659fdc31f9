"""Serverless (Model-as-a-Service) routes for the Azure REST simulation (tests/helpers/azure_transport.py).

``ServerlessRoutes(sim, ...).install()`` adds what the serverless path calls beyond the workspace, data assets, blobs
and jobs the simulation already answers:
  * ``marketplaceSubscriptions/{name}`` and ``serverlessEndpoints/{name}`` (GET, PUT, DELETE, POST listKeys), with
    the bodies of Azure/azure-rest-api-specs ``stable/2024-10-01/examples/Workspace/MarketplaceSubscription/*.json``
    and ``ServerlessEndpoint/*.json`` (their placeholder "string" values replaced by plausible ones). PUT is a
    long-running operation as for online endpoints: 201 with ``Azure-AsyncOperation``; DELETE 202 / 204;
  * the registry: discovery (``RegistryDiscoveryDto``, as azure-ai-ml's registry_discovery client deserializes it)
    and a model version (``ModelVersion``), whose tags are where the catalog lists serverless fine-tuning regions;
  * a workspace in another region than the simulation's default, when a test asks for one.
Stored resources live in ``sim.resources`` like every other, so the simulation's GET and DELETE handlers serve them.
"""

from __future__ import annotations

import copy
import re
import urllib.parse
from dataclasses import dataclass

from tests.helpers.azure_transport import (
    SUBSCRIPTION,
    SYSTEM_DATA,
    WORKSPACE_ID,
    AzureRestSimulation,
    FakeCredential,
    Recorded,
    Reply,
)

REGIONS_TAG = "maas-finetuning-deploy-regions"
TYPES = {
    "serverlessEndpoints": "Microsoft.MachineLearningServices/workspaces/serverlessEndpoints",
    "marketplaceSubscriptions": "Microsoft.MachineLearningServices/workspaces/marketplaceSubscriptions",
}
KEYS = {"primaryKey": "sim-primary-key", "secondaryKey": "sim-secondary-key"}  # ServerlessEndpoint/listKeys.json


def marketplace_subscription(name: str, model_id: str) -> dict:
    """MarketplaceSubscription/get.json's body."""
    return {
        "id": f"{WORKSPACE_ID}/marketplaceSubscriptions/{name}",
        "name": name,
        "type": TYPES["marketplaceSubscriptions"],
        "properties": {
            "modelId": model_id,
            "marketplacePlan": {"publisherId": "sim-publisher", "offerId": "sim-offer", "planId": "sim-plan"},
            "marketplaceSubscriptionStatus": "Subscribed",
            "provisioningState": "Succeeded",
        },
        "systemData": SYSTEM_DATA,
    }


def serverless_endpoint(name: str, model_id: str, location: str, uri: str) -> dict:
    """ServerlessEndpoint/get.json's body."""
    return {
        "id": f"{WORKSPACE_ID}/serverlessEndpoints/{name}",
        "name": name,
        "type": TYPES["serverlessEndpoints"],
        "location": location,
        "kind": "Default",
        "sku": {"name": "Consumption"},
        "tags": {},
        "properties": {
            "modelSettings": {"modelId": model_id},
            "authMode": "Key",
            "inferenceEndpoint": {"uri": uri, "headers": {}},
            "provisioningState": "Succeeded",
            "endpointState": "Online",
            "contentSafety": {"contentSafetyStatus": "Enabled"},
        },
        "systemData": SYSTEM_DATA,
    }


@dataclass
class ServerlessRoutes:
    sim: AzureRestSimulation
    scoring_uri: str = "http://127.0.0.1:9/unset"  # what a created endpoint reports as its inference URI
    region: str | None = None  # the workspace's region, when not the simulation's default
    catalog_regions: str | None = None  # the registry model's region tag; None: the model has none

    def install(self) -> ServerlessRoutes:
        sim = self.sim
        ws = re.escape(WORKSPACE_ID)
        if self.region:
            default = sim._workspace
            sim._workspace = lambda: {**default(), "location": self.region}
        for kind in TYPES:
            sim._named_routes(rf"{ws}/(?P<kind>{kind})/(?P<name>[^/]+)", put=self._put)
        sim._route("POST", rf"{ws}/serverlessEndpoints/(?P<name>[^/]+)/listKeys", self._keys)
        sim._route("GET", r"//[^/]+/registrymanagement/v1\.0/registries/(?P<registry>[^/]+)/discovery", self._discovery)
        registry_model = (
            r"//[^/]+/mferp/managementfrontend/subscriptions/[^/]+/resourceGroups/[^/]+/providers/"
            r"Microsoft\.MachineLearningServices/registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)"
            r"/versions/(?P<version>[^/]+)"
        )
        sim._route("GET", registry_model, self._registry_model)
        return self

    def registry_client(self):
        """A real MLClient on the model's registry, through the same simulation."""
        from azure.ai.ml import MLClient

        return MLClient(FakeCredential(), registry_name="azureml", transport=self.sim, retry_total=0)

    # ---- what the workspace holds ------------------------------------------------------------------------------
    def stored(self, kind: str) -> dict[str, dict]:
        prefix = f"{WORKSPACE_ID}/{kind}/".lower()
        return {body["name"]: body for path, body in self.sim.resources.items() if path.startswith(prefix)}

    def add(self, body: dict) -> None:
        self.sim.resources[body["id"].lower()] = copy.deepcopy(body)

    # ---- handlers ----------------------------------------------------------------------------------------------
    def _put(self, record: Recorded, match: re.Match) -> Reply:
        name, kind = match["name"], match["kind"]
        properties = record.body["properties"]
        if kind == "serverlessEndpoints":
            location = record.body.get("location") or self.sim._workspace()["location"]
            body = serverless_endpoint(name, properties["modelSettings"]["modelId"], location, self.scoring_uri)
        else:
            body = marketplace_subscription(name, properties["modelId"])
        self.add(body)
        path = urllib.parse.urlsplit(record.url).path
        operation = self.sim._start_operation(body, path)
        headers = {"Azure-AsyncOperation": operation, "x-ms-async-operation-timeout": "PT1H", "retry-after-ms": "1"}
        return Reply(201, body, headers)

    def _keys(self, record: Recorded, match: re.Match) -> Reply:
        if match["name"] not in self.stored("serverlessEndpoints"):
            return self.sim._not_found(record)
        return Reply(200, KEYS)

    def _discovery(self, record: Recorded, match: re.Match) -> Reply:
        return Reply(
            200,
            {
                "registryName": match["registry"],
                "primaryRegion": "eastus",
                "regions": ["eastus"],
                "subscriptionId": SUBSCRIPTION,
                "resourceGroup": "registry-builtin-prod-eastus-01",
                "primaryRegionResourceProviderUri": "https://cert-eastus.experiments.azureml.net/",
            },
        )

    def _registry_model(self, record: Recorded, match: re.Match) -> Reply:
        registry, name, version = match["registry"], match["name"], match["version"]
        tags = {"task": "chat-completion"}
        if self.catalog_regions is not None:
            tags[REGIONS_TAG] = self.catalog_regions
        return Reply(
            200,
            {
                "id": f"azureml://registries/{registry}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/registries/models/versions",
                # ModelVersionProperties: an MLflow model carries its flavors (the SDK's deserializer reads them).
                "properties": {
                    "modelType": "mlflow_model",
                    "modelUri": f"azureml://registries/{registry}/models/{name}/versions/{version}",
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
