"""A recording fake of ``azure.ai.ml.MLClient``: a simulation for offline tests, not Azure. SUPERSEDED by
tests/helpers/azure_transport.py (a real MLClient over a simulated REST API); kept only until the retrain, endpoint
and deploy_endpoint tests move there, then deleted.

Azure cannot be reached from these machines. This fake implements only the operations the code under test calls
(``pipelines/`` and ``components/deploy_endpoint``): jobs, data, environments, components, compute, schedules,
online endpoints and deployments, models. It records every call in order in ``client.calls`` as
``(operation, details)``, keeps what is registered or created in memory (``get`` raises the SDK's
ResourceNotFoundError for a missing one, as the service answers), serializes every endpoint and deployment it is
given with the SDK (``_to_dict()``, as the real client does before sending), and answers with the SDK's own entity
classes where the code reads them (VmSize, Usage, ManagedOnlineEndpoint with the read-only fields the service fills
in, the registered objects themselves).

What it cannot tell: whether the service would accept the objects (the tests validate those with the SDK instead),
or what the real service would refuse (quota, a bad image, a crashing container): tests make it fail on purpose
where they need a failure.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

WORKSPACE_ID = "/subscriptions/0000/resourceGroups/rg-test/providers/Microsoft.MachineLearningServices/workspaces/ws"

# Sizes as the size listing returns them in a region that offers all three (vCPUs are the published ones).
VM_SIZES = {
    "Standard_NC24ads_A100_v4": ("standardNCADSA100v4Family", 24, 1),
    "Standard_D4s_v3": ("standardDSv3Family", 4, 0),
    "Standard_NC8as_T4_v3": ("standardNCASv3_T4Family", 8, 1),
}

# Enough quota for the azure preset: 24 GPU vCPUs, 8 CPU vCPUs, 32 endpoint vCPUs (2 slots x (1 + reserve) x 8).
AMPLE_QUOTA = {
    "standardNCADSA100v4Family": (48, 0),
    "standardDSv3Family": (24, 0),
    "standardNCASv3_T4Family": (64, 0),
    "TotalDedicatedCores": (100, 0),
}


class Done:
    """Stands in for an LROPoller that has finished (or failed: ``result()`` raises ``error``)."""

    def __init__(self, value=None, error: Exception | None = None):
        self.value, self.error = value, error

    def result(self):
        if self.error:
            raise self.error
        return self.value


def not_found(what: str) -> ResourceNotFoundError:
    return ResourceNotFoundError(f"{what} not found")


def http_error(status: int, message: str) -> HttpResponseError:
    error = HttpResponseError(message=message)
    error.status_code = status
    return error


# ---- jobs, assets, compute, schedules: what pipelines/ submits --------------------------------------------------
class _Assets:
    """name:version store with get / create_or_update, like data, environments and components."""

    def __init__(self, client: FakeMLClient, kind: str):
        self.client, self.kind, self.store = client, kind, {}

    def get(self, name: str, version: str | None = None, label: str | None = None):
        self.client.record(f"{self.kind}.get", f"{name}:{version}")
        if (name, version) not in self.store:
            raise not_found(f"{self.kind} {name}:{version}")
        return self.store[(name, version)]

    def create_or_update(self, asset, version: str | None = None, **kwargs):
        if version is not None:
            asset.version = version
        self.client.record(f"{self.kind}.create_or_update", f"{asset.name}:{asset.version}")
        registered = copy.copy(asset)
        registered._id = f"{WORKSPACE_ID}/{self.kind}/{asset.name}/versions/{asset.version}"
        self.store[(asset.name, str(asset.version))] = registered
        self.client.created.append(registered)
        return registered

    def add(self, name: str, version: str, tags: dict | None = None):
        """Something registered before this test (by another run, or by hand)."""
        self.store[(name, version)] = SimpleNamespace(
            name=name, version=version, tags=tags or {}, id=f"{name}:{version}"
        )


class _Data(_Assets):
    def create_or_update(self, asset, version=None, **kwargs):
        # The SDK uploads the local folder during this call: record what it would upload, while it exists.
        folder = Path(asset.path)
        self.client.uploads[f"{asset.name}:{asset.version}"] = sorted(
            str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
        )
        return super().create_or_update(asset, version, **kwargs)


class _Jobs:
    def __init__(self, client: FakeMLClient, final_status: str):
        self.client, self.final_status = client, final_status

    def create_or_update(self, job, experiment_name=None, **kwargs):
        self.client.record("jobs.create_or_update", experiment_name)
        self.client.submitted.append(job)
        return SimpleNamespace(name="job-123", studio_url="https://ml.azure.com/runs/job-123")

    def stream(self, name):
        self.client.record("jobs.stream", name)

    def get(self, name):
        self.client.record("jobs.get", name)
        return SimpleNamespace(name=name, status=self.final_status)


class _Compute:
    def __init__(self, client: FakeMLClient, quota: dict[str, tuple[int, int]], region: str, forbidden: bool):
        self.client, self.quota, self.region, self.forbidden = client, quota, region, forbidden

    def _check(self, operation: str) -> None:
        self.client.record(operation, None)
        if self.forbidden:
            raise http_error(403, "AuthorizationFailed: no read access to usages")

    def list_sizes(self, location=None, compute_type=None):
        from azure.ai.ml.entities import VmSize

        self._check("compute.list_sizes")
        return [
            VmSize(name=name, family=family, v_cp_us=vcpus, gpus=gpus)
            for name, (family, vcpus, gpus) in VM_SIZES.items()
        ]

    def list_usage(self, location=None):
        from azure.ai.ml.entities import Usage, UsageName

        self._check("compute.list_usage")
        base = f"/subscriptions/0000/providers/Microsoft.MachineLearningServices/locations/{self.region}"
        usages = []
        for family, (limit, used) in self.quota.items():
            display = "Total Cluster Dedicated Regional vCPUs" if family == "TotalDedicatedCores" else family
            kind = "totalCores" if family == "TotalDedicatedCores" else "vmFamily"
            usages.append(
                Usage(
                    id=f"{base}/usages/{family}",
                    aml_workspace_location=self.region,
                    type=f"Microsoft.MachineLearningServices/{kind}/usages",
                    unit="Count",
                    current_value=used,
                    limit=limit,
                    name=UsageName(value=family, localized_value=display),
                )
            )
        # A per-workspace entry with a smaller share: the subscription-level entry must be the one compared.
        usages.append(
            Usage(
                id=f"{WORKSPACE_ID}/usages/standardNCADSA100v4Family",
                aml_workspace_location=self.region,
                type="Microsoft.MachineLearningServices/workspaces/dedicatedCores/usages",
                unit="Count",
                current_value=0,
                limit=0,
                name=UsageName(value="standardNCADSA100v4Family", localized_value="standardNCADSA100v4Family"),
            )
        )
        return usages


class _Schedules:
    def __init__(self, client: FakeMLClient):
        self.client, self.store = client, {}

    def begin_create_or_update(self, schedule, **kwargs):
        self.client.record("schedules.begin_create_or_update", schedule.name)
        self.store[schedule.name] = schedule
        return Done(schedule)

    def begin_disable(self, name, **kwargs):
        self.client.record("schedules.begin_disable", name)
        if name not in self.store:
            raise not_found(f"schedule {name}")
        return Done()

    def begin_delete(self, name, **kwargs):
        self.client.record("schedules.begin_delete", name)
        self.store.pop(name)
        return Done()


# ---- online endpoints, deployments, models: what deploy_endpoint and pipelines/endpoint.py serve ----------------
class _Endpoints:
    def __init__(self, client: FakeMLClient):
        self.client = client

    def get(self, name):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        self.client.record("online_endpoints.get", name)
        if name not in self.client.endpoints:
            raise not_found(f"endpoint {name}")
        stored = self.client.endpoints[name]
        # A fresh object, as the service returns, with the read-only fields it fills in.
        return ManagedOnlineEndpoint(
            name=name,
            auth_mode=stored["auth_mode"],
            traffic=dict(stored.get("traffic") or {}),
            scoring_uri=self.client.scoring_uri or f"https://{name}.westeurope.inference.ml.azure.com/score",
            provisioning_state="Succeeded",
        )

    def begin_create_or_update(self, endpoint):
        payload = endpoint._to_dict()
        self.client.record("online_endpoints.begin_create_or_update", payload)
        self.client.endpoints[endpoint.name] = payload
        return Done(endpoint)

    def invoke(self, endpoint_name, request_file=None, deployment_name=None, **_):
        request = json.loads(Path(request_file).read_text())
        self.client.record("online_endpoints.invoke", {"deployment_name": deployment_name, "request": request})
        reply = self.client.invoke_replies.get(deployment_name, self.client.invoke_reply)
        if isinstance(reply, list):  # one reply per call, in order
            reply = reply.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def get_keys(self, name):
        from azure.ai.ml.entities import EndpointAuthKeys

        self.client.record("online_endpoints.get_keys", name)
        return EndpointAuthKeys(primary_key=self.client.key, secondary_key="unused-secondary")

    def begin_delete(self, name=None, **_):
        self.client.record("online_endpoints.begin_delete", name)
        self.client.endpoints.pop(name, None)
        self.client.deployments = {k: v for k, v in self.client.deployments.items() if k[0] != name}
        return Done()


class _Deployments:
    def __init__(self, client: FakeMLClient):
        self.client = client

    def get(self, name, endpoint_name, **_):
        from azure.ai.ml.entities import ManagedOnlineDeployment

        self.client.record("online_deployments.get", name)
        stored = self.client.deployments.get((endpoint_name, name))
        if stored is None:
            raise not_found(f"deployment {name}")
        return ManagedOnlineDeployment(
            name=name, endpoint_name=endpoint_name, model=stored.get("model"), tags=stored.get("tags")
        )

    def list(self, endpoint_name, **_):
        self.client.record("online_deployments.list", endpoint_name)
        return [
            SimpleNamespace(name=name, model=d.get("model"), tags=d.get("tags"), provisioning_state="Succeeded")
            for (endpoint, name), d in self.client.deployments.items()
            if endpoint == endpoint_name
        ]

    def begin_create_or_update(self, deployment):
        payload = deployment._to_dict()
        code = Path(deployment.code_configuration.code)
        # The code folder is uploaded at this call: what it holds then is what the deployment runs.
        payload["_uploaded_files"] = sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file())
        self.client.record("online_deployments.begin_create_or_update", payload)
        self.client.deployments[(deployment.endpoint_name, deployment.name)] = payload
        return Done(deployment, error=self.client.create_error)

    def begin_delete(self, name, endpoint_name, **_):
        self.client.record("online_deployments.begin_delete", name)
        if self.client.deployments.pop((endpoint_name, name), None) is None:
            raise not_found(f"deployment {name}")
        return Done()


class _Models:
    def __init__(self, client: FakeMLClient):
        self.client = client

    def list(self, name, **_):
        self.client.record("models.list", name)
        return [SimpleNamespace(name=name, version=v) for v in self.client.model_versions.get(name, [])]

    def archive(self, name, version, **_):
        self.client.record("models.archive", f"{name}:{version}")


# ---- the client ---------------------------------------------------------------------------------------------------
class FakeMLClient:
    """Records every call; no network. Same attribute shape as MLClient for what the code under test uses."""

    def __init__(
        self,
        *,
        final_status: str = "Completed",
        quota: dict[str, tuple[int, int]] | None = None,
        region: str = "eastus2",
        quota_forbidden: bool = False,
        invoke_reply='{"output": "Hello!"}',
        key: str = "k3y-never-printed",
    ):
        self.calls: list[tuple[str, object]] = []
        # pipelines/: what was registered and submitted, and what a data registration would upload.
        self.created: list = []
        self.submitted: list = []
        self.uploads: dict[str, list[str]] = {}
        # Endpoints: what exists, and how the fake answers.
        self.endpoints: dict[str, dict] = {}
        self.deployments: dict[tuple[str, str], dict] = {}
        self.model_versions: dict[str, list[str]] = {}
        self.invoke_reply = invoke_reply
        self.invoke_replies: dict[str, object] = {}  # per deployment (a list: one per call), over invoke_reply
        self.create_error: Exception | None = None  # raised by a deployment's poller, as a failed provisioning
        self.key = key
        self.scoring_uri: str | None = None  # e.g. a loopback server standing in for the endpoint

        self.jobs = _Jobs(self, final_status)
        self.data = _Data(self, "data")
        self.environments = _Assets(self, "environments")
        self.components = _Assets(self, "components")
        self.compute = _Compute(self, AMPLE_QUOTA if quota is None else quota, region, quota_forbidden)
        self.schedules = _Schedules(self)
        self.online_endpoints = _Endpoints(self)
        self.online_deployments = _Deployments(self)
        self.models = _Models(self)
        self.workspace_name = "ws"
        self.workspaces = SimpleNamespace(get=lambda name: SimpleNamespace(name=name, location=region))

    def record(self, operation: str, details) -> None:
        self.calls.append((operation, details))

    def sequence(self) -> list[str]:
        """The operations called, in order."""
        return [operation for operation, _ in self.calls]

    def payloads(self, operation: str) -> list:
        """What each call of ``operation`` was given, in order."""
        return [details for name, details in self.calls if name == operation]

    def creations(self) -> list[str]:
        """Every create_or_update as ``operation(name:version)``, in order."""
        return [f"{name}({details})" for name, details in self.calls if name.endswith("create_or_update")]

    def with_live(self, endpoint: str, deployment: str, model: str) -> FakeMLClient:
        """An endpoint that already sends 100% of traffic to ``deployment`` serving ``model`` (name:version)."""
        self.endpoints[endpoint] = {"name": endpoint, "auth_mode": "key", "traffic": {deployment: 100}}
        self.deployments[(endpoint, deployment)] = {"model": f"azureml:{model}", "tags": {"model": model}}
        return self
