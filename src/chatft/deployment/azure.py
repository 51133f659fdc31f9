"""The Azure ML target of the rollout: a key-auth managed online endpoint and one managed online deployment per slot.

Each deployment runs environment ``chatft-inference`` with code = ``score.py`` + ``serving.json`` + ``chatft``, the
instance type/count from infra/compute.json (via the pipeline), and concurrency, request timeout, probes and the
server's workers/threads from serving.json. During a swap both slots run, so the subscription needs quota for twice
the instances. Tested offline against a simulation of the Azure ML REST API, never against Azure itself.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from chatft.deployment.rollout import DeployError, Probe
from chatft.local_server import live_deployment
from chatft.serving.launch import SCORE_SCRIPT, SERVING_FILE, stage_code
from chatft.serving.settings import load_serving_settings, server_environment

INFERENCE_ENVIRONMENT = "azureml:chatft-inference:3"
PROBES = ("readiness", "liveness")
PROBE_KEYS = ("initial_delay", "period", "timeout", "success_threshold", "failure_threshold")


def ml_client_from_job_env():
    """MLClient for the workspace running this job, authenticated as the compute's managed identity."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    names = {
        "subscription_id": "AZUREML_ARM_SUBSCRIPTION",
        "resource_group_name": "AZUREML_ARM_RESOURCEGROUP",
        "workspace_name": "AZUREML_ARM_WORKSPACE_NAME",
    }
    missing = [env for env in names.values() if not os.environ.get(env)]
    if missing:
        raise DeployError(
            f"{', '.join(missing)} not set: target=azure runs inside an Azure ML job, which sets them; "
            "locally use target=local"
        )
    client_id = os.environ.get("DEFAULT_IDENTITY_CLIENT_ID")
    credential = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
    return MLClient(credential, **{key: os.environ[env] for key, env in names.items()})


def _check_probe(where: str, probe: str, values) -> None:
    if not isinstance(values, dict) or set(values) != set(PROBE_KEYS):
        raise DeployError(f"{where}.{probe} needs exactly {', '.join(PROBE_KEYS)} (seconds / counts)")
    for key, value in values.items():
        lowest = 0 if key == "initial_delay" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise DeployError(f"{where}.{probe}.{key} must be a whole number >= {lowest}, got {value!r}")
    if values["timeout"] >= values["period"]:
        raise DeployError(f"{where}.{probe}.timeout must be shorter than its period")


def probe_settings(path: Path) -> dict:
    """serving.json's "probes" as the SDK's ``ProbeSettings`` ({"readiness": ..., "liveness": ...}), after checking
    that neither probe gives up on a model still loading (the arithmetic is in serving.json's "_notes")."""
    from azure.ai.ml.entities import ProbeSettings

    raw = json.loads(path.read_text(encoding="utf-8")).get("probes")
    where = f"{path}: probes"
    if not isinstance(raw, dict) or set(raw) != {"model_load_worst_case_s", *PROBES}:
        raise DeployError(f"{where} must be an object with model_load_worst_case_s, readiness and liveness")
    worst = raw["model_load_worst_case_s"]
    if not isinstance(worst, int) or isinstance(worst, bool) or worst < 1:
        raise DeployError(f"{where}.model_load_worst_case_s must be a whole number of seconds >= 1, got {worst!r}")
    for probe in PROBES:
        _check_probe(where, probe, raw[probe])
    readiness, liveness = raw["readiness"], raw["liveness"]
    if liveness["initial_delay"] < worst:
        raise DeployError(
            f"{where}.liveness.initial_delay is under model_load_worst_case_s: a loading model would be restarted"
        )
    if readiness["initial_delay"] + readiness["failure_threshold"] * readiness["period"] < worst:
        raise DeployError(
            f"{where}.readiness gives up before model_load_worst_case_s (initial_delay + failure_threshold x period)"
        )
    if liveness["success_threshold"] != 1:
        raise DeployError(f"{where}.liveness.success_threshold must be 1 (Kubernetes allows no other value)")
    return {probe: ProbeSettings(**raw[probe]) for probe in PROBES}


def build_endpoint(endpoint_name: str, traffic: dict[str, int], identity_id: str | None = None):
    from azure.ai.ml.entities import IdentityConfiguration, ManagedIdentityConfiguration, ManagedOnlineEndpoint

    # With content safety, the endpoint runs as the user-assigned identity that holds the Content Safety role.
    identity = (
        IdentityConfiguration(
            type="user_assigned", user_assigned_identities=[ManagedIdentityConfiguration(resource_id=identity_id)]
        )
        if identity_id
        else None
    )
    return ManagedOnlineEndpoint(
        name=endpoint_name,
        auth_mode="key",
        description="Chat endpoint for the fine-tuned model (components/deploy_endpoint/score.py)",
        traffic=dict(traffic),
        identity=identity,
    )


def build_deployment(
    endpoint_name: str,
    slot: str,
    model_info: dict,
    instance_type: str,
    instance_count: int,
    code_dir: Path,
    content_safety: dict | None = None,
):
    """The deployment of ``slot``, running ``code_dir`` (score.py and the serving.json it is sized by)."""
    from azure.ai.ml.entities import CodeConfiguration, ManagedOnlineDeployment, OnlineRequestSettings

    try:
        serving = load_serving_settings(code_dir / SERVING_FILE)
    except ValueError as err:
        raise DeployError(str(err)) from None
    probes = probe_settings(code_dir / SERVING_FILE)
    environment_variables = {
        **server_environment(serving),  # the variables serve_local.py sets for the same server locally
        # The server's App Insights hook reads each response's whole body to log it (response.get_data()), which
        # would run a streamed answer to its end before the first byte leaves. The data collector below keeps
        # every answer instead (azureml-inference-server-http 1.5.1, server/appinsights_client.py).
        "APP_INSIGHTS_LOG_RESPONSE_ENABLED": "false",
    }
    return ManagedOnlineDeployment(
        name=slot,
        endpoint_name=endpoint_name,
        model=f"azureml:{model_info['name']}:{model_info['version']}",
        environment=INFERENCE_ENVIRONMENT,
        code_configuration=CodeConfiguration(code=str(code_dir), scoring_script=SCORE_SCRIPT),
        instance_type=instance_type,
        instance_count=instance_count,
        environment_variables=environment_variables | _content_safety_environment(content_safety),
        # Monitoring: requests, traces and score.py's per-request JSON lines go to the workspace's Application
        # Insights (infra/modules/application_insights.bicep); model inputs and outputs go to the workspace
        # storage through Azure ML's data collector (chatft.serving.app collects them with azureml-ai-monitoring).
        app_insights_enabled=True,
        data_collector=data_collector(),
        request_settings=OnlineRequestSettings(
            request_timeout_ms=serving["request_timeout_ms"],
            max_concurrent_requests_per_instance=serving["max_concurrent_requests_per_instance"],
        ),
        # The merged weights take minutes to load: probes sized for that, from serving.json.
        readiness_probe=probes["readiness"],
        liveness_probe=probes["liveness"],
        tags={"model": f"{model_info['name']}:{model_info['version']}"},
    )


def _content_safety_environment(content_safety: dict | None) -> dict[str, str]:
    """CONTENT_SAFETY_ENDPOINT (and the identity's client id) for score.py: screening on (chatft/content_safety.py)."""
    from chatft.content_safety import deployment_environment

    if not content_safety:
        return {}
    # The job runs on the CPU cluster as that same user-assigned identity (infra/main.bicep); Azure ML names its id.
    return deployment_environment(content_safety["endpoint"], os.environ.get("DEFAULT_IDENTITY_CLIENT_ID"))


def data_collector():
    """Azure ML's data collector for the deployment: the collections score.py writes (every request: rate 1.0)."""
    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    collections = {name: DeploymentCollection(enabled="true") for name in ("model_inputs", "model_outputs")}
    return DataCollector(collections=collections, sampling_rate=1.0)


class AzureTarget:
    """The rollout's steps on Azure ML, through ``ml_client`` (an ``azure.ai.ml.MLClient``: only its
    ``online_endpoints`` and ``online_deployments``). ``tmp`` holds the staged code and the smoke request file."""

    removed = "deleted"
    clean_up_always = False

    def __init__(
        self,
        ml_client,
        model_info: dict,
        endpoint_name: str,
        size: tuple[str, int],
        source: Path,
        tmp: Path,
        content_safety: dict | None = None,
    ):
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        self.client, self.model_info, self.endpoint_name = ml_client, model_info, endpoint_name
        self.source, self.tmp = source, tmp
        self.instance_type, self.instance_count = size
        self.wanted = f"{model_info['name']}:{model_info['version']}"
        self.base = {  # endpoint_info's fields that the service does not report
            "endpoint_name": endpoint_name,
            "model_name": model_info["name"],
            "model_uri": model_info["model_uri"],
            "model_version": str(model_info["version"]),
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
        }
        self.content_safety = content_safety
        self.identity = (content_safety or {}).get("identity")
        self.failures = (DeployError, HttpResponseError)
        self.deployment = None
        try:
            self.traffic = dict(ml_client.online_endpoints.get(endpoint_name).traffic or {})
        except ResourceNotFoundError:  # a first deployment
            self.traffic = {}

    def live(self) -> str | None:
        return live_deployment({"traffic": self.traffic})

    def serves(self, slot: str) -> bool:
        current = self.client.online_deployments.get(name=slot, endpoint_name=self.endpoint_name)
        return (current.tags or {}).get("model") == self.wanted

    def keep(self, slot: str) -> Probe:
        return self.probe(slot)

    def prepare(self, slot: str) -> None:
        # Create or update under the stable name; the live routing table goes with it unchanged until the swap.
        print(f"creating/updating endpoint {self.endpoint_name} (traffic {self.traffic}) ...", flush=True)
        endpoint = build_endpoint(self.endpoint_name, self.traffic, self.identity)
        self.client.online_endpoints.begin_create_or_update(endpoint).result()
        code_dir = stage_code(self.source, self.tmp / "code", with_launcher=False)
        size = (self.instance_type, self.instance_count)
        self.deployment = build_deployment(
            self.endpoint_name, slot, self.model_info, *size, code_dir, self.content_safety
        )
        where = f"{self.instance_count} x {self.instance_type}, {self.wanted}"
        print(f"creating deployment {slot} ({where}) at 0% traffic ...", flush=True)

    def start(self, slot: str) -> Probe:
        self.client.online_deployments.begin_create_or_update(self.deployment).result()
        return self.probe(slot)

    def failure(self, err: BaseException, slot: str) -> str:
        return str(err) if isinstance(err, DeployError) else f"deployment {slot} failed: {err.message}"

    def remove(self, slot: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):  # a deployment that was never created
            self.client.online_deployments.begin_delete(name=slot, endpoint_name=self.endpoint_name).result()

    def route(self, slot: str) -> None:
        print(f"{self.endpoint_name}: moving 100% of traffic to {slot} ...", flush=True)
        swapped = build_endpoint(self.endpoint_name, {slot: 100}, self.identity)
        self.client.online_endpoints.begin_create_or_update(swapped).result()

    def unroute(self, slot: str) -> None:  # no smoke test after the swap: nothing to undo
        raise NotImplementedError

    def retire(self, slot: str, previous: str | None) -> None:
        for old in (name for name, share in self.traffic.items() if share > 0 and name != slot):
            print(f"deleting the previous deployment {old} ...", flush=True)
            self.client.online_deployments.begin_delete(name=old, endpoint_name=self.endpoint_name).result()

    def summary(self, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict:
        """endpoint_info.json for target=azure: the model, the size and the endpoint as the service reports it."""
        endpoint = self.client.online_endpoints.get(self.endpoint_name)
        if reused:
            print(f"kept {self.endpoint_name}: {slot} already serves {self.wanted}", flush=True)
        else:
            print(f"{self.endpoint_name}: 100% to {slot}; scoring URI {endpoint.scoring_uri}", flush=True)
        return {
            **self.base,
            "url": endpoint.scoring_uri,
            "traffic": dict(endpoint.traffic or {}),
            "deployment_name": slot,
            "previous_deployment": previous,
            "reused": reused,
            "smoke_test_outputs": outputs,
        }

    def probe(self, slot: str) -> Probe:
        """Smoke requests addressed to ``slot`` itself (it may take no traffic yet)."""
        from azure.core.exceptions import HttpResponseError

        where = f"{self.endpoint_name}/{slot}"
        request_file = self.tmp / "smoke_request.json"

        def send(request: dict) -> tuple[int, str, None]:
            request_file.write_text(json.dumps(request), encoding="utf-8")
            try:
                body = self.client.online_endpoints.invoke(
                    endpoint_name=self.endpoint_name, deployment_name=slot, request_file=str(request_file)
                )
            except HttpResponseError as err:
                raise DeployError(
                    f"smoke test against {where} failed: HTTP {err.status_code}: {err.message}; see the logs: "
                    f"az ml online-deployment get-logs -e {self.endpoint_name} -n {slot}"
                ) from None
            return 200, body if isinstance(body, str) else json.dumps(body), None

        return Probe(send, where)
