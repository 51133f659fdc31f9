"""deploy_endpoint.py, target=azure: the blue/green rollout against a simulation of the Azure ML REST API, and the
SDK entities chatft.deployment.azure builds (probes, serving settings, content safety, data collection).

A real MLClient sends through a fake transport answering in the REST spec's shapes (tests/helpers/azure_endpoints.py
and azure_transport.py say what it can and cannot show); ``story`` lists what changed the endpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from chatft.deployment.azure import build_deployment, build_endpoint, ml_client_from_job_env, probe_settings
from chatft.deployment.rollout import DeployError
from chatft.serving.contract import parse_request
from chatft.serving.settings import server_environment
from tests.helpers.azure_endpoints import simulated_endpoints, story
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "deploy_endpoint"
MODEL_INFO = {"name": "chat-ft", "version": "3", "model_uri": "models:/chat-ft/3", "run_id": "r", "tags": {}}
MODEL_INFO_4 = {**MODEL_INFO, "version": "4", "model_uri": "models:/chat-ft/4"}
SEED_INPUT = [{"role": "user", "content": "How do I restart my router?"}]


@pytest.fixture(scope="module")
def deploy():
    return load_script("deploy_endpoint_azure_under_test", COMPONENT / "deploy_endpoint.py")


@pytest.fixture(scope="module")
def compute():
    return json.loads((REPO / "infra" / "compute.json").read_text())["online_endpoint"]


@pytest.fixture
def code_dir(tmp_path):
    """A deployment's code folder as far as the builders read it: serving.json."""
    shutil.copy2(COMPONENT / "serving.json", tmp_path / "serving.json")
    return tmp_path


# ---- target=azure against the simulated Azure ML REST API -----------------------------------------------------
# A real MLClient sends through tests/helpers/azure_endpoints.py: the SDK's serializers, pollers and deserializers run;
# the answers follow the REST spec's examples. ``story`` lists what changed the endpoint: PUTs, DELETEs, scoring calls.


@pytest.fixture
def endpoint_sim(monkeypatch):
    yield from simulated_endpoints(monkeypatch)


def put_bodies(sim, what: str) -> list[dict]:
    """The bodies the SDK PUT for ``what``: "endpoint" or a deployment name."""
    pattern = r"/onlineEndpoints/chat-ft$" if what == "endpoint" else rf"/onlineEndpoints/chat-ft/deployments/{what}$"
    return sim.puts(pattern)


def write_yaml(path: Path, entity) -> None:
    """An SDK entity as the YAML `az ml ... create -f` reads. A deployment's ``dump(path)`` writes it; an endpoint's
    ignores the path and returns the dict (PLATFORM_NOTES)."""
    returned = entity.dump(path)
    if not path.exists():
        path.write_text(yaml.safe_dump(json.loads(json.dumps(returned, default=str))))


def uploaded_code(sim) -> set[str]:
    """The files of the deployment's code snapshot, as uploaded to the workspace's storage."""
    return {name.split("/code/", 1)[1] for name in sim.blobs if "/code/" in name}


def test_azure_first_deploy_creates_blue_smoke_tests_it_then_routes_to_it(deploy, compute, endpoint_sim):
    sim = endpoint_sim
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], compute["instance_count"])

    assert story(sim) == [
        "PUT chat-ft",  # created, routing nothing (a first GET found no endpoint: 404)
        "PUT chat-ft/deployments/blue",  # blue, at 0% traffic
        "score blue",  # smoke tests, addressed to blue itself
        "score blue",
        "PUT chat-ft",  # traffic 100% to blue
    ]
    assert sim.sent("GET", r"/onlineEndpoints/chat-ft$")[0].status == 404
    created, routed = put_bodies(sim, "endpoint")
    assert created["properties"]["authMode"] == "Key" and created["properties"]["traffic"] == {}
    assert routed["properties"]["traffic"] == {"blue": 100}
    (deployment,) = put_bodies(sim, "blue")
    properties = deployment["properties"]
    assert properties["endpointComputeType"] == "Managed"
    assert properties["instanceType"] == compute["instance_type"]
    assert deployment["sku"]["capacity"] == compute["instance_count"] == 1
    assert properties["model"].endswith("/models/chat-ft/versions/3") and deployment["tags"] == {"model": "chat-ft:3"}
    assert properties["environmentId"].endswith("/environments/chatft-inference/versions/3")
    assert properties["codeConfiguration"]["scoringScript"] == "score.py"
    assert {"score.py", "serving.json", "chatft/model_source.py"} <= uploaded_code(sim)
    assert not {"deploy_endpoint.py", "serve_local.py", "component.yml"} & uploaded_code(sim)
    assert info["url"] == "https://chat-ft.eastus2.inference.ml.azure.com/score"  # the service's scoringUri
    assert info["traffic"] == {"blue": 100} and info["deployment_name"] == "blue"
    assert info["previous_deployment"] is None and info["reused"] is False
    assert info["smoke_test_outputs"] == ["Hello!", "Hello!"]
    # The key the SDK fetched authorised the smoke requests.
    assert {r.headers["Authorization"] for r in sim.sent("POST", r"/score$")} == {f"Bearer {sim.key}"}


def test_azure_objects_load_back_with_the_sdk_schemas(deploy, compute, endpoint_sim, tmp_path):
    """What the service stored reads back as SDK entities, and dumps to YAML that `az ml ... create -f` accepts."""
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    client = endpoint_sim.client()
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    endpoint = client.online_endpoints.get("chat-ft")
    deployment = client.online_deployments.get(name="blue", endpoint_name="chat-ft")
    deployment.code_configuration.code = str(tmp_path)  # the staged folder is gone with the step
    write_yaml(tmp_path / "endpoint.yml", endpoint)
    write_yaml(tmp_path / "deployment.yml", deployment)
    assert load_online_endpoint(tmp_path / "endpoint.yml").traffic == {"blue": 100}
    reloaded = load_online_deployment(tmp_path / "deployment.yml")
    assert reloaded.instance_type == compute["instance_type"] and reloaded.request_settings.request_timeout_ms > 0
    assert reloaded.environment_variables["WORKER_COUNT"]


def test_azure_deployment_probes_wait_out_the_model_load_and_load_back_with_the_sdk(
    deploy, compute, endpoint_sim, tmp_path
):
    """Issue 10, defect 7: the deployment set no probes, though the merged Phi-3 weights take minutes to load."""
    from azure.ai.ml import load_online_deployment

    client = endpoint_sim.client()
    deploy.deploy_azure(client, MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    probes = json.loads((COMPONENT / "serving.json").read_text())["probes"]
    # On the wire: the REST shape of the spec's example (ISO 8601 durations).
    (sent,) = put_bodies(endpoint_sim, "blue")
    assert sent["properties"]["readinessProbe"]["failureThreshold"] == probes["readiness"]["failure_threshold"]
    assert sent["properties"]["livenessProbe"]["initialDelay"].startswith("PT")
    # Read back from the service and through the SDK's YAML schema.
    deployment = client.online_deployments.get(name="blue", endpoint_name="chat-ft")
    deployment.code_configuration.code = str(tmp_path)
    write_yaml(tmp_path / "deployment.yml", deployment)
    reloaded = load_online_deployment(tmp_path / "deployment.yml")

    worst = probes["model_load_worst_case_s"]
    for name in ("readiness", "liveness"):
        probe = getattr(reloaded, f"{name}_probe")
        assert {key: getattr(probe, key) for key in probes[name]} == probes[name], name
    # Neither probe gives up on a model that is still loading.
    assert reloaded.liveness_probe.initial_delay >= worst
    readiness = reloaded.readiness_probe
    assert readiness.initial_delay + readiness.failure_threshold * readiness.period >= worst
    assert worst >= 120, "loading 7.6 GB of merged weights takes minutes"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"liveness": {"initial_delay": 60}}, "a loading model would be restarted"),
        ({"readiness": {"failure_threshold": 3}}, "readiness gives up before model_load_worst_case_s"),
        ({"readiness": {"timeout": 30}}, "readiness.timeout must be shorter than its period"),
        ({"liveness": {"success_threshold": 2}}, "must be 1"),
        ({"liveness": {"period": "30"}}, "liveness.period must be a whole number >= 1"),
    ],
)
def test_probe_settings_that_would_kill_a_loading_model_are_refused(tmp_path, change, message):
    raw = json.loads((COMPONENT / "serving.json").read_text())
    for probe, values in change.items():
        raw["probes"][probe].update(values)
    (tmp_path / "serving.json").write_text(json.dumps(raw))
    with pytest.raises(DeployError, match=message):
        probe_settings(tmp_path / "serving.json")


def test_azure_smoke_requests_pass_the_scoring_contract(deploy, compute, endpoint_sim):
    deploy.deploy_azure(endpoint_sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    requests = [body for _, body in endpoint_sim.scored()]
    assert requests == list(deploy.SMOKE_REQUESTS)
    for request in requests:
        messages, params = parse_request(json.dumps(request))
        assert messages[-1]["role"] == "user" and params["temperature"] == 0.7  # sampled, as the seed's request
    assert requests[0]["input_data"]["input_string"] == SEED_INPUT


def test_azure_one_blank_sampled_answer_is_asked_again(deploy, compute, endpoint_sim):
    sim = endpoint_sim
    sim.scoring_replies["blue"] = ['{"output": ""}', '{"output": "Unplug it."}', '{"output": "Check the cable."}']
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    assert story(sim).count("score blue") == 3
    assert info["smoke_test_outputs"] == ["Unplug it.", "Check the cable."]


def test_azure_new_version_goes_blue_to_green_then_blue_is_deleted(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "blue", "chat-ft:3")
    client = sim.client()
    info = deploy.deploy_azure(client, MODEL_INFO_4, "chat-ft", compute["instance_type"], 1)

    assert story(sim) == [
        "PUT chat-ft",  # updated, still 100% blue (blue serves chat-ft:3, not 4)
        "PUT chat-ft/deployments/green",
        "score green",
        "score green",
        "PUT chat-ft",  # 100% green
        "DELETE chat-ft/deployments/blue",
    ]
    kept, swapped = put_bodies(sim, "endpoint")
    assert kept["properties"]["traffic"] == {"blue": 100}  # an update never sends an empty routing table
    assert swapped["properties"]["traffic"] == {"green": 100}
    assert sim.get("onlineEndpoints/chat-ft/deployments", "blue") is None
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is not None
    assert info["deployment_name"] == "green" and info["previous_deployment"] == "blue"
    assert info["traffic"] == {"green": 100}

    # The next version goes back to blue.
    again = deploy.deploy_azure(client, {**MODEL_INFO, "version": "5"}, "chat-ft", compute["instance_type"], 1)
    assert again["deployment_name"] == "blue" and again["previous_deployment"] == "green"
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is None


def test_azure_redeploy_of_the_live_version_only_smoke_tests_it(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "green", "chat-ft:3")
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1)
    assert story(sim) == ["score green", "score green"]
    assert sim.sent("GET", r"/onlineEndpoints/chat-ft/deployments/green$"), "it asked what green serves"
    assert info["reused"] is True and info["deployment_name"] == "green" and info["traffic"] == {"green": 100}


def test_azure_force_redeploys_the_live_version_to_the_other_slot(deploy, compute, endpoint_sim):
    sim = endpoint_sim.with_live("chat-ft", "green", "chat-ft:3")
    info = deploy.deploy_azure(sim.client(), MODEL_INFO, "chat-ft", compute["instance_type"], 1, force=True)
    assert not sim.sent("GET", r"/onlineEndpoints/chat-ft/deployments/green$")
    assert info["deployment_name"] == "blue" and info["previous_deployment"] == "green" and not info["reused"]


@pytest.mark.parametrize(
    ("fail", "expected"),
    [
        ("reply", r"smoke test against chat-ft/green failed: HTTP 200: \{\"message\""),
        ("empty", "smoke test against chat-ft/green failed: the model answered with empty text 3 times in a row"),
        ("http", "(?s)smoke test against chat-ft/green failed: HTTP 424: .*model init failed.*; see the logs"),
        ("create", "deployment green failed: .*container crashed"),
    ],
)
def test_azure_failed_smoke_test_deletes_the_new_slot_and_keeps_traffic(deploy, compute, endpoint_sim, fail, expected):
    sim = endpoint_sim.with_live("chat-ft", "blue", "chat-ft:3")
    if fail == "reply":
        sim.scoring_replies["green"] = ['{"message": "An unexpected error occurred in scoring script."}']
    elif fail == "empty":
        sim.scoring_replies["green"] = ['{"output": "  "}']
    elif fail == "http":
        sim.scoring_replies["green"] = [(424, '{"message": "model init failed"}')]
    else:
        sim.failing_deployments["green"] = "container crashed: exit code 137"
    with pytest.raises(DeployError, match=expected) as raised:
        deploy.deploy_azure(sim.client(), MODEL_INFO_4, "chat-ft", compute["instance_type"], 1)
    assert "rolled back: deployment green deleted; traffic stays {'blue': 100}" in str(raised.value)
    assert [body["properties"]["traffic"] for body in put_bodies(sim, "endpoint")] == [{"blue": 100}]  # never green
    assert story(sim)[-1] == "DELETE chat-ft/deployments/green"
    assert sim.get("onlineEndpoints/chat-ft/deployments", "green") is None
    assert sim.get("onlineEndpoints/chat-ft/deployments", "blue") is not None  # the live slot untouched


def test_azure_serving_settings_reach_the_deployment(code_dir):
    serving = json.loads((COMPONENT / "serving.json").read_text())
    deployment = build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, code_dir)
    limits = deployment.request_settings
    assert limits.max_concurrent_requests_per_instance == serving["max_concurrent_requests_per_instance"]
    assert limits.request_timeout_ms == serving["request_timeout_ms"]
    # The same worker/thread variables as the local server gets, so both serve alike.
    assert deployment.environment_variables == {
        **server_environment(serving),
        "APP_INSIGHTS_LOG_RESPONSE_ENABLED": "false",  # else the server's App Insights hook buffers every stream
    }
    assert deployment.environment_variables["WORKER_COUNT"] == str(serving["worker_count"])


IDENTITY = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-x-compute"


def test_content_safety_reaches_the_deployment_and_the_endpoint_runs_as_its_identity(code_dir, monkeypatch):
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "client-id-of-the-compute-identity")
    screening = {"endpoint": "https://cs-x.cognitiveservices.azure.com/", "identity": IDENTITY}
    deployment = build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, code_dir, screening)
    assert deployment.environment_variables["CONTENT_SAFETY_ENDPOINT"] == screening["endpoint"]
    assert deployment.environment_variables["CONTENT_SAFETY_CLIENT_ID"] == "client-id-of-the-compute-identity"
    endpoint = build_endpoint("chat-ft", {"blue": 100}, IDENTITY)
    assert endpoint.identity.type == "user_assigned"
    assert endpoint.identity.user_assigned_identities[0].resource_id == IDENTITY
    plain = build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, code_dir)
    assert "CONTENT_SAFETY_ENDPOINT" not in plain.environment_variables
    assert build_endpoint("chat-ft", {}).identity is None


def test_azure_deployment_collects_inputs_outputs_and_enables_app_insights(code_dir):
    deployment = build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, code_dir)
    assert deployment.app_insights_enabled is True
    collector = deployment.data_collector
    assert collector.sampling_rate == 1.0
    assert {name: c.enabled for name, c in collector.collections.items()} == {
        "model_inputs": "true",
        "model_outputs": "true",
    }
    # What goes over the wire (the SDK's own serializer): the names chatft.serving.app's Collector(name=...) writes to.
    rest = deployment._to_rest_object(location="westeurope").properties
    assert rest.app_insights_enabled is True
    modes = {name: c.data_collection_mode.lower() for name, c in rest.data_collector.collections.items()}
    assert modes == {"model_inputs": "enabled", "model_outputs": "enabled"}
    app = (REPO / "src" / "chatft" / "serving" / "app.py").read_text()
    assert 'Collector(name="model_inputs"' in app and 'Collector(name="model_outputs"' in app


def test_a_bad_serving_json_stops_the_deployment(tmp_path):
    (tmp_path / "serving.json").write_text('{"worker_count": 1}')
    with pytest.raises(DeployError, match=r"serving.json: unknown key\(s\) -, missing key\(s\)"):
        build_deployment("chat-ft", "blue", MODEL_INFO, "Standard_NC8as_T4_v3", 1, tmp_path)


def test_azure_client_needs_the_job_environment(monkeypatch):
    for name in ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DeployError, match="AZUREML_ARM_SUBSCRIPTION.*not set"):
        ml_client_from_job_env()


def test_azure_client_uses_the_compute_identity(monkeypatch):
    from azure.identity import ManagedIdentityCredential

    monkeypatch.setenv("AZUREML_ARM_SUBSCRIPTION", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("AZUREML_ARM_RESOURCEGROUP", "rg-chatft")
    monkeypatch.setenv("AZUREML_ARM_WORKSPACE_NAME", "mlw-chatft")
    monkeypatch.setenv("DEFAULT_IDENTITY_CLIENT_ID", "11111111-1111-1111-1111-111111111111")
    client = ml_client_from_job_env()  # constructing makes no call (PLATFORM_NOTES)
    assert client.workspace_name == "mlw-chatft" and client.resource_group_name == "rg-chatft"
    assert isinstance(client._credential, ManagedIdentityCredential)
