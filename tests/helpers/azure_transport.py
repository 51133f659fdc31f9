"""A simulation of the Azure ML REST API, for offline tests: an azure-core transport given to a real ``MLClient``.

Azure cannot be reached from these machines. Instead of faking ``MLClient`` (a fake that would agree with whatever our
code assumes), the tests build the real client::

    sim = AzureRestSimulation()
    ml_client = sim.client()        # MLClient(FakeCredential(), sub, rg, ws, transport=sim)

so the SDK's own serializers, REST operation classes, long-running-operation pollers and ``_from_rest_object``
deserializers run, and only the bytes on the wire are simulated. ``AzureRestSimulation`` is an azure-core
``RequestsTransport`` whose ``requests`` session has an adapter that answers in-process: nothing leaves the process
(tests/conftest.py also refuses any non-loopback socket).

What it answers, and from where:
  * response bodies have the shapes of the REST API specification's examples (Azure/azure-rest-api-specs,
    ``specification/machinelearningservices/resource-manager/Microsoft.MachineLearningServices/stable/2024-04-01/
    examples/``); the fixture files in tests/fixtures/azure_rest/ say which example each follows;
  * resources the SDK PUTs are stored and returned with the envelope the examples show (``id``, ``name``, ``type``,
    ``systemData``, ``properties.provisioningState``); a GET of a missing one is 404 with ARM's error body;
  * long-running operations answer as the examples' headers say: a PUT of a schedule, online endpoint or deployment
    is 201 with an ``Azure-AsyncOperation`` URL that reports ``InProgress`` ``polls`` times, then ``Succeeded``;
    a DELETE is 202 with a ``Location`` URL that answers 202 and then 200;
  * blob uploads to the workspace's storage account (data assets, component code) are stored in ``sim.blobs``.

Every request is recorded (``sim.requests``: method, URL, path, api-version, JSON body). A request no route expects
raises ``UnexpectedRequest`` and is kept in ``sim.unexpected``; the ``azure_sim`` fixture fails the test on any, even
one the SDK swallowed.

What it cannot tell: whether the real service would accept a body (it stores what it is given; the tests validate
entities with the SDK), or anything the service decides by itself (quota enforcement, image builds, a crashing
container, run-history streaming beyond a job's final status). Tests set those outcomes explicitly.

Its vocabulary (ids, Recorded, Reply, fixtures) is in tests/helpers/azure_rest.py, its storage account in
tests/helpers/azure_blobs.py; both are importable from here too.
"""

from __future__ import annotations

import copy
import io
import json
import re
import urllib.parse
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPResponse

from tests.helpers.azure_blobs import BlobStorage
from tests.helpers.azure_rest import (  # noqa: F401  (re-exported)
    ARM,
    LOCATION_ID,
    LONG_RUNNING,
    REGION,
    RESOURCE_GROUP,
    RESOURCE_TYPES,
    STORAGE_ACCOUNT,
    SUBSCRIPTION,
    SYSTEM_DATA,
    WORKSPACE,
    WORKSPACE_ID,
    FakeCredential,
    Handler,
    Recorded,
    Reply,
    UnexpectedRequest,
    arm_error,
    fixture,
)

__all__ = [
    "REGION",
    "WORKSPACE_ID",
    "AzureRestSimulation",
    "Recorded",
    "Reply",
    "UnexpectedRequest",
    "arm_error",
    "fixture",
]


class _Adapter(BaseAdapter):
    """A ``requests`` adapter that answers from the simulation instead of opening a connection."""

    def __init__(self, sim: AzureRestSimulation):
        super().__init__()
        self.sim = sim
        self._builder = HTTPAdapter()

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        reply = self.sim._answer(request)
        if isinstance(reply.body, bytes):
            data = reply.body
            content_type = "application/octet-stream"
        elif reply.body is None:
            data, content_type = b"", None
        else:
            data, content_type = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
        headers = {"x-ms-request-id": "00000000-0000-0000-0000-000000000000", **reply.headers}
        if content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        headers["Content-Length"] = str(len(data))
        raw = HTTPResponse(
            body=io.BytesIO(data), headers=headers, status=reply.status, preload_content=False, decode_content=False
        )
        return self._builder.build_response(request, raw)

    def close(self):
        pass


class AzureRestSimulation(BlobStorage, RequestsTransport):
    """The simulated service. Keyword arguments set what the service would report; see the module docstring."""

    def __init__(
        self,
        *,
        usages: list[dict] | None = None,
        vm_sizes: list[dict] | None = None,
        quota_forbidden: bool = False,
        job_status: str | list[str] = "Completed",
        polls: int = 1,
    ):
        session = requests.Session()
        session.mount("https://", _Adapter(self))
        session.mount("http://", _Adapter(self))
        super().__init__(session=session, session_owner=False)
        self.requests: list[Recorded] = []
        self.unexpected: list[Recorded] = []
        self.resources: dict[str, dict] = {}  # lower-cased ARM id → stored resource
        self.blobs: dict[str, bytes] = {}  # "container/path" → content
        self.blob_metadata: dict[str, dict[str, str]] = {}
        self.usages = fixture("usages.json")["value"] if usages is None else usages
        self.vm_sizes = fixture("vm_sizes.json")["value"] if vm_sizes is None else vm_sizes
        self.quota_forbidden = quota_forbidden
        # What successive GETs of a submitted job report; the last one stays.
        self.job_statuses = [job_status] if isinstance(job_status, str) else list(job_status)
        self.polls = polls
        self._operations: dict[str, dict] = {}
        self._job_polls: dict[str, list[str]] = {}
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._add_routes()

    # ---- what tests use ----------------------------------------------------------------------------------------
    def client(self, **kwargs):
        """A real MLClient for the simulated workspace, sending through this transport (no retries: a test that
        needs one says so)."""
        from azure.ai.ml import MLClient

        return MLClient(
            FakeCredential(),
            SUBSCRIPTION,
            RESOURCE_GROUP,
            WORKSPACE,
            transport=self,
            retry_total=0,
            enable_telemetry=False,
            show_progress=False,
            **kwargs,
        )

    def route_storage(self, monkeypatch) -> None:
        """Send the SDK's blob uploads (data assets, component code) here too: azure-storage-blob builds its own
        pipeline, so its clients are given this transport (a public keyword of every azure-core client)."""
        from azure.storage.blob import BlobServiceClient, ContainerClient

        for cls in (BlobServiceClient, ContainerClient):
            original = cls.__init__

            def init(client, *args, _original=original, **kwargs):
                kwargs.setdefault("transport", self)
                _original(client, *args, **kwargs)

            monkeypatch.setattr(cls, "__init__", init)

    def add(
        self, kind: str, name: str, version: str | None = None, properties: dict | None = None, **envelope: Any
    ) -> dict:
        """A resource that exists before the test (registered by another run, or by hand). ``kind`` is the path
        segment the SDK uses (``environments``, ``schedules``, ``onlineEndpoints/<endpoint>/deployments`` ...);
        ``envelope`` sets top-level fields beside ``properties`` (``sku``, ``location``, ``tags``)."""
        path = f"{WORKSPACE_ID}/{kind}/{name}" + (f"/versions/{version}" if version else "")
        kind = kind.rsplit("/", 1)[-1]
        return self._store(path, kind, {"properties": properties or {}, **envelope})

    def sequence(self) -> list[str]:
        """``METHOD path`` of every request, in order."""
        return [str(r) for r in self.requests]

    def sent(self, method: str, pattern: str) -> list[Recorded]:
        """The recorded requests whose path matches ``pattern`` (a regular expression searched in the path)."""
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def get(self, kind: str, name: str, version: str | None = None) -> dict | None:
        path = f"{WORKSPACE_ID}/{kind}/{name}" + (f"/versions/{version}" if version else "")
        return self.resources.get(path.lower())

    # ---- the wire ----------------------------------------------------------------------------------------------
    def _answer(self, prepared) -> Reply:
        url = urllib.parse.urlsplit(prepared.url)
        query = dict(urllib.parse.parse_qsl(url.query))
        body = prepared.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode()
        decoded: Any = body or None
        if body and "json" in (prepared.headers.get("Content-Type") or ""):
            decoded = json.loads(body)
        path = url.path if url.netloc == "management.azure.com" else f"//{url.netloc}{url.path}"
        record = Recorded(
            prepared.method,
            prepared.url,
            path.replace(WORKSPACE_ID, "{ws}"),
            query.get("api-version"),
            query,
            dict(prepared.headers),
            decoded,
        )
        self.requests.append(record)
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if method == prepared.method and match:
                reply = handler(record, match)
                record.status = reply.status
                return reply
        return self._unexpected(record)

    def _unexpected(self, record: Recorded) -> Reply:
        self.unexpected.append(record)
        raise UnexpectedRequest(f"the Azure simulation has no route for {record.method} {record.url}")

    def _route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern, re.IGNORECASE), handler))

    def _add_routes(self) -> None:
        ws = re.escape(WORKSPACE_ID)
        loc = rf"/subscriptions/{SUBSCRIPTION}/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
        versions = rf"{ws}/(?P<kind>environments|data|components|codes|models)/(?P<name>[^/]+)/versions"
        versioned = rf"{versions}/(?P<v>[^/]+)"
        jobs = rf"{ws}/(?P<kind>jobs)/(?P<name>[^/]+)"
        deployments = rf"{ws}/onlineEndpoints/(?P<endpoint>[^/]+)/(?P<kind>deployments)"
        blob = rf"//{STORAGE_ACCOUNT}\.blob\.core\.windows\.net/(?P<blob>.+)"
        datastore = rf"{ws}/datastores/workspaceblobstore"
        for method, pattern, handler in [  # a route table, first match wins: method, URL pattern, handler
            ("GET", ws, lambda r, m: Reply(200, self._workspace())),
            ("GET", rf"{loc}/vmSizes", lambda r, m: self._quota_read({"value": self.vm_sizes})),
            ("GET", rf"{loc}/usages", lambda r, m: self._quota_read({"value": self.usages})),
            ("GET", versioned, self._get),
            ("GET", versions, self._list),
            ("PUT", versioned, self._put),
            ("POST", rf"{versioned}/startPendingUpload", self._start_pending_upload),
            ("GET", jobs, self._get_job),
            ("PUT", jobs, self._put_job),
            ("GET", deployments, self._list),
            *self._named(rf"{deployments}/(?P<name>[^/]+)"),
            *self._named(rf"{ws}/(?P<kind>schedules|onlineEndpoints)/(?P<name>[^/]+)"),
            ("GET", rf"{ws}/computes/(?P<name>[^/]+)", self._compute),
            ("GET", rf"{ws}/datastores", lambda r, m: Reply(200, {"value": [self._datastore()]})),
            ("GET", datastore, lambda r, m: Reply(200, self._datastore())),
            ("POST", rf"{datastore}/listSecrets", self._datastore_secrets),
            ("GET", rf"{loc}/(?P<kind>mfeOperationsStatus|mfeOperationResults)/(?P<op>[^/]+)", self._poll),
            ("PUT", blob, self._put_blob),
            ("HEAD", blob, self._head_blob),
            ("GET", blob, self._get_blob),
        ]:
            self._route(method, pattern, handler)

    def _named(self, pattern: str, put: Handler | None = None) -> list[tuple[str, str, Handler]]:
        """GET, PUT (``put``, else the generic store) and DELETE of a resource whose pattern names kind and name."""
        return [("GET", pattern, self._get), ("PUT", pattern, put or self._put), ("DELETE", pattern, self._delete)]

    def _named_routes(self, pattern: str, put: Handler | None = None) -> None:
        """The routes of ``_named``, added after those already there (the serverless routes)."""
        for method, route, handler in self._named(pattern, put):
            self._route(method, route, handler)

    # ---- the workspace and its quota ---------------------------------------------------------------------------
    def _workspace(self) -> dict:
        body = fixture("workspace.json")
        body.update(id=WORKSPACE_ID, name=WORKSPACE, location=REGION)
        return body

    def _compute(self, record: Recorded, match: re.Match) -> Reply:
        """The clusters of infra/compute.json, as `make infra` creates them; any other name does not exist."""
        from pipelines.settings import load_compute

        clusters = {c["name"]: c for key, c in load_compute().items() if key.endswith("_cluster")}
        cluster = clusters.get(match["name"])
        if cluster is None:
            return self._not_found(record)
        body = fixture("amlcompute.json")
        body.update(id=f"{WORKSPACE_ID}/computes/{cluster['name']}", name=cluster["name"], location=REGION)
        properties = body["properties"]["properties"]
        properties["vmSize"] = cluster["vm_size"]
        properties["scaleSettings"].update(
            maxNodeCount=cluster["max_nodes"],
            minNodeCount=cluster["min_nodes"],
            nodeIdleTimeBeforeScaleDown=f"PT{cluster['idle_seconds_before_scaledown']}S",
        )
        return Reply(200, body)

    def _quota_read(self, body: dict) -> Reply:
        if self.quota_forbidden:
            return arm_error(
                403,
                "AuthorizationFailed",
                "The client 'tester@example.com' does not have authorization to perform action "
                "'Microsoft.MachineLearningServices/locations/usages/read' over scope "
                f"'/subscriptions/{SUBSCRIPTION}' or the scope is invalid.",
            )
        return Reply(200, body)

    # ---- resources ---------------------------------------------------------------------------------------------
    def _store(self, path: str, kind: str, body: dict, status: str = "Succeeded") -> dict:
        stored = copy.deepcopy(body) if body else {}
        stored.update(id=path, name=path.rsplit("/", 1)[1], type=RESOURCE_TYPES[kind], systemData=SYSTEM_DATA)
        stored.setdefault("properties", {})["provisioningState"] = status
        self.resources[path.lower()] = stored
        return stored

    def _not_found(self, record: Recorded) -> Reply:
        return arm_error(404, "UserError", f"Could not find the resource at {record.path}.")

    def _get(self, record: Recorded, match: re.Match) -> Reply:
        stored = self.resources.get(urllib.parse.urlsplit(record.url).path.lower())
        return Reply(200, stored) if stored else self._not_found(record)

    def _list(self, record: Recorded, match: re.Match) -> Reply:
        """The versions stored under a name (the SDK asks codes for one with a given content hash this way), or an
        endpoint's deployments."""
        prefix = urllib.parse.urlsplit(record.url).path.lower() + "/"
        found = [body for path, body in self.resources.items() if path.startswith(prefix)]
        if "hash" in record.query:
            found = [body for body in found if body["properties"].get("contentHash") == record.query["hash"]]
        return Reply(200, {"value": found})

    def _put(self, record: Recorded, match: re.Match) -> Reply:
        path = urllib.parse.urlsplit(record.url).path
        kind = match["kind"]
        existed = path.lower() in self.resources
        stored = self._store(path, kind, record.body)
        if kind in LONG_RUNNING:
            op = self._start_operation(stored, path)
            headers = {"Azure-AsyncOperation": op, "x-ms-async-operation-timeout": "PT1H", "retry-after-ms": "1"}
            return Reply(201, stored, headers)
        return Reply(200 if existed else 201, stored)

    def _put_job(self, record: Recorded, match: re.Match) -> Reply:
        path = urllib.parse.urlsplit(record.url).path
        stored = self._store(path, "jobs", record.body)
        properties = stored["properties"]
        studio = f"https://ml.azure.com/runs/{stored['name']}?wsid={WORKSPACE_ID}"
        properties["services"] = {"Studio": {"jobServiceType": "Studio", "endpoint": studio}}
        properties["status"] = "NotStarted"
        self._job_polls[path.lower()] = list(self.job_statuses)
        return Reply(201, copy.deepcopy(stored))

    def _get_job(self, record: Recorded, match: re.Match) -> Reply:
        path = urllib.parse.urlsplit(record.url).path.lower()
        stored = self.resources.get(path)
        if stored is None:
            return self._not_found(record)
        statuses = self._job_polls.get(path)
        if statuses:
            stored["properties"]["status"] = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        return Reply(200, stored)

    def _delete(self, record: Recorded, match: re.Match) -> Reply:
        path = urllib.parse.urlsplit(record.url).path.lower()
        if self.resources.pop(path, None) is None:
            return Reply(204)
        op = self._start_operation(None, path)
        return Reply(202, None, {"Location": op, "retry-after-ms": "1"})

    # ---- long-running operations -------------------------------------------------------------------------------
    # Operation replies carry ``retry-after-ms: 1`` (a header Azure services send and azure-core honours) so the
    # SDK's pollers come back at once instead of after their default 5-30 s.
    def _start_operation(self, resource: dict | None, path: str) -> str:
        """An operation URL: ``mfeOperationsStatus`` (an Azure-AsyncOperation status body) for a PUT,
        ``mfeOperationResults`` (202 until done) for a DELETE, as Azure ML's headers point to."""
        op = f"op-{len(self._operations) + 1}"
        self._operations[op] = {"left": self.polls, "resource": resource, "path": path}
        kind = "mfeOperationsStatus" if resource is not None else "mfeOperationResults"
        return f"{ARM}{LOCATION_ID}/{kind}/{op}?api-version=2024-04-01"

    def _poll(self, record: Recorded, match: re.Match) -> Reply:
        operation = self._operations.get(match["op"])
        if operation is None:
            return self._unexpected(record)
        operation["left"] -= 1
        done = operation["left"] < 0
        if match["kind"] == "mfeOperationResults":
            return Reply(200) if done else Reply(202, None, {"Location": record.url, "retry-after-ms": "1"})
        status = "Succeeded" if done else "InProgress"
        return Reply(200, {"id": record.path, "name": match["op"], "status": status}, {"retry-after-ms": "1"})
