"""The Bicep templates: they parse, the resource graph is wired as designed, and checkov finds nothing.

pycep and checkov live in their own venv (.venv-iac, created by ``infra/check.sh``) because checkov's pins
clash with the main stack, so every parse runs there in a subprocess. Without that venv these tests skip,
unless CHATFT_REQUIRE_IAC=1 (CI), where its absence fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"

CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
AZUREML_DATA_SCIENTIST = "f6c7c914-8db3-469d-8ca1-694a8f32e121"
STORAGE_QUEUE_DATA_MESSAGE_SENDER = "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a"
ML_API_VERSION = "2025-09-01"

_PARSE_SCRIPT = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps({name: BicepParser().parse(file_path=Path(name)) for name in sys.argv[1:]}, default=str))
"""


def _iac_python() -> Path:
    venv = Path(os.environ.get("CHATFT_IAC_VENV", ROOT / ".venv-iac"))
    python = venv / "bin" / "python"
    if python.exists():
        return python
    message = f"{venv} does not exist: run infra/check.sh once to create it (pycep and checkov live there)"
    if os.environ.get("CHATFT_REQUIRE_IAC") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _bicep_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.bicep"))


def _run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def iac_python() -> Path:
    return _iac_python()


@pytest.fixture(scope="module")
def parsed(iac_python) -> dict[str, dict[str, Any]]:
    """Every .bicep file under infra/, parsed by pycep: {"main.bicep": {...}, "modules/x.bicep": {...}}."""
    result = _run([iac_python, "-c", _PARSE_SCRIPT, *_bicep_files(INFRA)], cwd=INFRA)
    assert result.returncode == 0, f"pycep failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def _ref(value: Any) -> Any:
    """pycep's property accessors as dotted text (``identity.outputs.id``); anything else unchanged."""
    if isinstance(value, dict) and value.get("operator", {}).get("type") == "property_accessor":
        operands = value["operator"]["operands"]
        return f"{_ref(operands['operand_1'])}.{_ref(operands['operand_2'])}"
    return value


def _resources(tree: dict[str, Any], type_: str, existing: bool = False) -> dict[str, dict[str, Any]]:
    return {
        name: r for name, r in tree.get("resources", {}).items() if r["type"] == type_ and r["existing"] == existing
    }


def _config(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource's body, looking through an ``if (...)`` condition."""
    config = resource["config"]
    return config["config"] if "condition" in config else config


def _module(parsed: dict[str, Any], symbol: str) -> dict[str, Any]:
    return parsed["main.bicep"]["modules"][symbol]


def test_every_bicep_file_parses(parsed):
    assert sorted(parsed) == _bicep_files(INFRA)
    assert "main.bicep" in parsed and len(parsed) > 5


def test_main_calls_every_module_and_modules_follow_the_contract(parsed):
    main = parsed["main.bicep"]
    called = {m["detail"]["path"] for m in main["modules"].values()}
    assert called == {name for name in parsed if name.startswith("modules/")}, "a module file is never called"
    assert "resources" not in main, "main.bicep only wires modules; resources belong in modules/"
    for symbol, module in main["modules"].items():
        tree, params = parsed[module["detail"]["path"]], module["config"]["params"]
        assert "baseName" in tree["parameters"] and params["baseName"] == "baseName", symbol
        tracked = any("location" in _config(r) for r in tree.get("resources", {}).values() if not r["existing"])
        if tracked:
            assert params.get("location") == "location" and params.get("tags") == "tags", symbol
        assert {"id", "ids"} & set(tree["outputs"]), f"{symbol} outputs no resource id"
        missing = {p for p, spec in tree["parameters"].items() if spec["default"] is None} - set(params)
        assert not missing, f"{symbol}: required parameters not passed: {missing}"


@pytest.mark.parametrize(
    ("module", "prefix"),
    [
        ("storage_account", "st"),
        ("key_vault", "kv-"),
        ("log_analytics", "log-"),
        ("application_insights", "appi-"),
        ("container_registry", "cr"),
        ("aml_workspace", "mlw-"),
        ("managed_identity", "id-"),
        ("event_grid", "evgt-"),
        ("function_storage", "stfn"),
        ("function_app", "func-"),
    ],
)
def test_resource_names_carry_a_type_prefix(module, prefix):
    text = (INFRA / "modules" / f"{module}.bicep").read_text()
    assert f"'{prefix}${{baseName}}" in text


def test_workspace_is_wired_to_its_dependencies(parsed):
    workspaces = _resources(parsed["modules/aml_workspace.bicep"], "Microsoft.MachineLearningServices/workspaces")
    assert len(workspaces) == 1
    (workspace,) = workspaces.values()
    assert workspace["api_version"] == ML_API_VERSION
    properties = workspace["config"]["properties"]
    dependencies = {
        "storageAccount": "storageAccountId",
        "keyVault": "keyVaultId",
        "applicationInsights": "applicationInsightsId",
        "containerRegistry": "containerRegistryId",
    }
    assert {key: properties[key] for key in dependencies} == dependencies
    params = _module(parsed, "workspace")["config"]["params"]
    assert _ref(params["storageAccountId"]) == "storage.outputs.id"
    assert _ref(params["keyVaultId"]) == "keyVault.outputs.id"
    assert _ref(params["applicationInsightsId"]) == "appInsights.outputs.id"
    assert _ref(params["containerRegistryId"]) == "registry.outputs.id"


def test_one_machine_learning_api_version_everywhere(parsed):
    versions = {
        (name, r["api_version"])
        for name, tree in parsed.items()
        for r in tree.get("resources", {}).values()
        if r["type"].startswith("Microsoft.MachineLearningServices/")
    }
    assert versions and {v for _, v in versions} == {ML_API_VERSION}, versions


def test_compute_identity_is_user_assigned_and_exposes_its_client_id(parsed):
    identities = _resources(
        parsed["modules/managed_identity.bicep"], "Microsoft.ManagedIdentity/userAssignedIdentities"
    )
    assert len(identities) == 1
    outputs = parsed["main.bicep"]["outputs"]
    assert _ref(outputs["identityClientId"]["value"]) == "identity.outputs.clientId"


def test_role_assignments_grant_the_three_roles_at_the_right_scopes(parsed):
    tree = parsed["modules/role_assignments.bicep"]
    role_ids = {name: var["value"] for name, var in tree["variables"].items()}
    existing = {name: r["type"] for name, r in tree["resources"].items() if r["existing"]}
    assignments = _resources(tree, "Microsoft.Authorization/roleAssignments")
    assert len(assignments) == 3

    scopes = {}
    for name, assignment in assignments.items():
        config = assignment["config"]
        role_definition = config["properties"]["roleDefinitionId"]["function"]
        assert role_definition["type"] == "subscription_resource_id", name
        assert role_definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", name
        role_var = role_definition["parameters"]["resource_name_1"]
        guid = role_ids[role_var]
        scope = config.get("scope")
        scopes[guid] = existing[scope] if scope else "resourceGroup"
        # Deterministic name: guid(<scope id>, principal, role), so redeploying updates instead of duplicating.
        name_args = config["name"]["function"]
        assert name_args["type"] == "guid", name
        base = name_args["parameters"]["base_string"]
        if scope:
            assert _ref(base) == f"{scope}.id", name
        else:
            assert base["function"] == {
                "type": "resource_group",
                "parameters": {"resource_group_name": None, "subscription_id": None},
                "property_name": "id",
            }, name
        assert {name_args["parameters"]["extra_string_1"], name_args["parameters"]["extra_string_2"]} == {
            "principalId",
            role_var,
        }, name
        assert config["properties"]["principalId"] == "principalId", name
        assert config["properties"]["principalType"] == "ServicePrincipal", name

    assert scopes == {
        CONTRIBUTOR: "resourceGroup",
        STORAGE_BLOB_DATA_READER: "Microsoft.Storage/storageAccounts",
        ACR_PULL: "Microsoft.ContainerRegistry/registries",
    }
    params = _module(parsed, "roleAssignments")["config"]["params"]
    assert _ref(params["principalId"]) == "identity.outputs.principalId"
    assert _ref(params["storageAccountName"]) == "storage.outputs.name"
    assert _ref(params["containerRegistryName"]) == "registry.outputs.name"


def _render(value: Any, cluster: dict[str, Any]) -> Any:
    """Evaluate the cluster module's expressions against one compute.json entry."""
    if isinstance(value, dict) and "operator" in value:
        owner, _, key = _ref(value).partition(".")
        assert owner == "cluster", f"unexpected expression {value}"
        return cluster[key]
    if isinstance(value, dict):
        return {k: _render(v, cluster) for k, v in value.items()}
    if isinstance(value, str):
        return re.sub(r"\$\{cluster\.(\w+)\}", lambda m: str(cluster[m.group(1)]), value)
    return value


@pytest.mark.parametrize(
    ("symbol", "entry"),
    [("gpuCluster", "gpu_cluster"), ("gpuClusterX4", "gpu_cluster_x4"), ("cpuCluster", "cpu_cluster")],
)
def test_clusters_are_sized_by_compute_json(parsed, symbol, entry):
    compute_var = parsed["main.bicep"]["variables"]["compute"]["value"]["function"]
    assert compute_var == {
        "type": "load_json_content",
        "parameters": {"file_path": "compute.json", "json_path": None, "encoding": None},
    }
    module = _module(parsed, symbol)
    assert module["detail"]["path"] == "modules/aml_compute_cluster.bicep"
    assert _ref(module["config"]["params"]["cluster"]) == f"compute.{entry}"

    cluster = json.loads((INFRA / "compute.json").read_text())[entry]
    (resource,) = _resources(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    config = resource["config"]
    assert _render(config["name"], cluster) == cluster["name"]
    assert config["properties"]["computeType"] == "AmlCompute"
    aml = _render(config["properties"]["properties"], cluster)
    assert aml["vmSize"] == cluster["vm_size"]
    assert aml["vmPriority"] == cluster["tier"]
    assert aml["scaleSettings"] == {
        "minNodeCount": cluster["min_nodes"],
        "maxNodeCount": cluster["max_nodes"],
        "nodeIdleTimeBeforeScaleDown": f"PT{cluster['idle_seconds_before_scaledown']}S",
    }


def test_gpu_cluster_scales_to_zero_after_two_idle_minutes(parsed):
    """The numbers the team agreed on, as rendered from compute.json into the ARM properties."""
    gpu = json.loads((INFRA / "compute.json").read_text())["gpu_cluster"]
    (resource,) = _resources(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    aml = _render(resource["config"]["properties"]["properties"], gpu)
    assert aml["vmSize"] == "Standard_NC24ads_A100_v4"
    assert aml["scaleSettings"] == {"minNodeCount": 0, "maxNodeCount": 1, "nodeIdleTimeBeforeScaleDown": "PT120S"}


def test_compute_values_are_not_repeated_in_bicep():
    compute = json.loads((INFRA / "compute.json").read_text())
    literals = {compute[c][k] for c in ("gpu_cluster", "gpu_cluster_x4", "cpu_cluster") for k in ("name", "vm_size")}
    literals.add(compute["online_endpoint"]["instance_type"])
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text()
        repeated = sorted(value for value in literals if value in text)
        assert not repeated, f"{path.relative_to(ROOT)} repeats {repeated}; read them from compute.json"


def test_clusters_run_as_the_user_assigned_identity(parsed):
    (resource,) = _resources(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    assert resource["config"]["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
    for symbol in ("gpuCluster", "cpuCluster"):
        assert _ref(_module(parsed, symbol)["config"]["params"]["identityId"]) == "identity.outputs.id"


def test_event_grid_only_enqueues_blob_created_events_for_the_retraining_function(parsed):
    """Event Grid delivers to a Storage queue, not to the function: it never waits on a submission (and redelivers
    it after ~30 s), and the subscription needs no published function, so there is one deployment, not two."""
    assert "retrainFunctionDeployed" not in parsed["main.bicep"]["parameters"]
    assert not any("secure" in str(p["decorators"]) for p in parsed["main.bicep"]["parameters"].values()), (
        "the retraining path needs no secret parameter: the queue is addressed by resource id"
    )

    tree = parsed["modules/event_grid.bicep"]
    (topic,) = _resources(tree, "Microsoft.EventGrid/systemTopics").values()
    assert topic["config"]["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic["config"]["identity"] == {"type": "SystemAssigned"}
    (subscription,) = _resources(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
    assert "condition" not in subscription["config"], "the queue exists from the first deployment"
    body = subscription["config"]["properties"]
    assert "destination" not in body, "delivery goes through the topic's identity (the account has shared keys off)"
    delivery = body["deliveryWithResourceIdentity"]
    assert delivery["identity"] == {"type": "SystemAssigned"}
    assert delivery["destination"]["endpointType"] == "StorageQueue"
    assert _ref(delivery["destination"]["properties"]["resourceId"]) == "queueStorage.id"
    assert _ref(delivery["destination"]["properties"]["queueName"]) == "queue.name"
    assert body["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert body["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/${trainingDataContainerName}/blobs/"
    assert body["deadLetterDestination"]["properties"]["blobContainerName"] == "deadLetterContainerName"

    # The topic may only send messages, and only to this queue; the subscription waits for that grant.
    (grant,) = _resources(tree, "Microsoft.Authorization/roleAssignments").values()
    assert grant["config"]["scope"] == "queue"
    role_var = grant["config"]["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert tree["variables"][role_var]["value"] == STORAGE_QUEUE_DATA_MESSAGE_SENDER
    assert _ref(grant["config"]["properties"]["principalId"]) == "systemTopic.identity.principalId"
    assert subscription["config"]["dependsOn"] == ["topicSendsToQueue"]

    # One queue, named once: the retrain_queue module's output feeds Event Grid and the function's app setting.
    queue_tree = parsed["modules/retrain_queue.bicep"]
    (queue,) = _resources(queue_tree, "Microsoft.Storage/storageAccounts/queueServices/queues").values()
    assert queue["config"]["name"] == "queueName"
    params = _module(parsed, "eventGrid")["config"]["params"]
    assert _ref(params["trainingDataContainerName"]) == "storage.outputs.trainingDataContainerName"
    assert _ref(params["queueStorageName"]) == "functionStorage.outputs.name"
    assert _ref(params["queueName"]) == "retrainQueue.outputs.queueName"
    assert _ref(_module(parsed, "retrainQueue")["config"]["params"]["functionStorageName"]) == (
        "functionStorage.outputs.name"
    )
    app_params = _module(parsed, "retrainFunction")["config"]["params"]
    assert _ref(app_params["retrainQueueName"]) == "retrainQueue.outputs.queueName"
    assert _ref(app_params["lockContainerName"]) == "retrainQueue.outputs.lockContainerName"
    (app,) = _resources(parsed["modules/function_app.bicep"], "Microsoft.Web/sites").values()
    settings = {s["name"]: s["value"] for s in app["config"]["properties"]["siteConfig"]["appSettings"]}
    assert settings["CHATFT_RETRAIN_QUEUE"] == "retrainQueueName"
    assert settings["CHATFT_LOCK_CONTAINER"] == "lockContainerName"
    assert settings["CHATFT_LOCK_ACCOUNT_URL"] == "functionStorageBlobEndpoint"
    source = (INFRA / "retrain_function" / "function_app.py").read_text()
    assert 'queue_name="%CHATFT_RETRAIN_QUEUE%"' in source and 'connection="AzureWebJobsStorage"' in source


def test_retrain_function_runs_python_on_flex_consumption_as_its_own_identity(parsed):
    tree = parsed["modules/function_app.bicep"]
    (plan,) = _resources(tree, "Microsoft.Web/serverfarms").values()
    assert plan["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    (app,) = _resources(tree, "Microsoft.Web/sites").values()
    config = app["config"]
    assert config["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
    properties = config["properties"]
    assert properties["httpsOnly"] is True
    assert properties["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    storage = properties["functionAppConfig"]["deployment"]["storage"]
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    settings = {s["name"]: s["value"] for s in properties["siteConfig"]["appSettings"]}
    # Identity-based host storage (the account has shared keys off) and what workspace_client() reads.
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["AZUREML_WORKSPACE_NAME"] == "workspaceName"
    assert {"AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "CHATFT_TRAINING_CONTAINER"} <= set(settings)
    assert not any("AccountKey" in str(value) for value in settings.values()), "no storage keys in app settings"
    (account,) = _resources(parsed["modules/function_storage.bicep"], "Microsoft.Storage/storageAccounts").values()
    assert account["config"]["properties"]["allowSharedKeyAccess"] is False

    params = _module(parsed, "retrainFunction")["config"]["params"]
    assert _ref(params["identityId"]) == "retrainIdentity.outputs.id"
    assert _ref(params["identityClientId"]) == "retrainIdentity.outputs.clientId"
    assert _module(parsed, "retrainIdentity")["config"]["params"]["purpose"] == "retrain"


def test_retrain_identity_gets_exactly_its_five_roles(parsed):
    tree = parsed["modules/retrain_role_assignments.bicep"]
    role_ids = {name: var["value"] for name, var in tree["variables"].items()}
    existing = {name: r["type"] for name, r in tree["resources"].items() if r["existing"]}
    granted = set()
    for name, assignment in _resources(tree, "Microsoft.Authorization/roleAssignments").items():
        config = assignment["config"]
        role_var = config["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        assert config["name"]["function"]["type"] == "guid", name
        assert _ref(config["name"]["function"]["parameters"]["base_string"]) == f"{config['scope']}.id", name
        assert config["properties"]["principalType"] == "ServicePrincipal", name
        granted.add((role_ids[role_var], existing[config["scope"]], config["scope"]))
    assert granted == {
        (STORAGE_BLOB_DATA_READER, "Microsoft.Storage/storageAccounts", "trainingStorage"),
        (STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (STORAGE_QUEUE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (AZUREML_DATA_SCIENTIST, "Microsoft.MachineLearningServices/workspaces", "workspace"),
    }
    params = _module(parsed, "retrainRoles")["config"]["params"]
    assert _ref(params["principalId"]) == "retrainIdentity.outputs.principalId"
    assert _ref(params["trainingStorageName"]) == "storage.outputs.name"
    assert _ref(params["functionStorageName"]) == "functionStorage.outputs.name"
    assert _ref(params["workspaceName"]) == "workspace.outputs.name"


def test_main_outputs_what_the_pipeline_needs(parsed):
    outputs = parsed["main.bicep"]["outputs"]
    expected = {
        "workspaceName": "workspace.outputs.name",
        "workspaceId": "workspace.outputs.id",
        "identityClientId": "identity.outputs.clientId",
        "gpuClusterName": "gpuCluster.outputs.name",
        "cpuClusterName": "cpuCluster.outputs.name",
        "retrainFunctionAppName": "retrainFunction.outputs.name",
        "retrainQueueName": "retrainQueue.outputs.queueName",
    }
    assert {name: _ref(outputs[name]["value"]) for name in expected} == expected


def test_dev_parameters_file_sets_every_required_parameter(parsed):
    """pycep cannot read .bicepparam files, so this reads the few line shapes the file uses."""
    text = (INFRA / "main.dev.bicepparam").read_text()
    assert re.search(r"^using '\./main\.bicep'$", text, re.MULTILINE)
    assigned = dict(re.findall(r"^param (\w+) = (.+)$", text, re.MULTILINE))
    declared = parsed["main.bicep"]["parameters"]
    assert set(assigned) <= set(declared), f"unknown parameters: {set(assigned) - set(declared)}"
    required = {name for name, spec in declared.items() if spec["default"] is None}
    assert required <= set(assigned), f"required parameters not set: {required - set(assigned)}"
    base_name = assigned["baseName"].strip("'")
    assert re.fullmatch(r"[a-z0-9]{3,12}", base_name), base_name


def _checkov_report(iac_python: Path, folder: Path) -> dict[str, Any]:
    checkov = iac_python.parent / "checkov"
    result = _run([checkov, "-d", folder, "--framework", "bicep", "--skip-download", "--compact", "-o", "json"], ROOT)
    report = json.loads(result.stdout)
    assert isinstance(report, dict), "one framework was asked for, so checkov returns one report"
    return report


@pytest.mark.slow
def test_checkov_finds_nothing_and_every_skip_gives_a_reason(iac_python):
    report = _checkov_report(iac_python, INFRA)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"].get("failed_checks", [])]
    assert not failed, failed
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0 and summary["resource_count"] > 0
    for check in report["results"].get("skipped_checks", []):
        assert check["check_result"]["suppress_comment"] != "No comment provided", check["check_id"]


def _copy_with_syntax_error(tmp_path: Path) -> Path:
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    main = copy / "main.bicep"
    # A typo a person could make: "=" instead of ":" inside the storage module's params.
    broken = main.read_text().replace(
        "    trainingDataContainerName: trainingDataContainerName", "    trainingDataContainerName = x", 1
    )
    assert broken != main.read_text()
    main.write_text(broken)
    return copy


def test_parse_step_fails_on_a_syntax_error(iac_python, tmp_path):
    copy = _copy_with_syntax_error(tmp_path)
    result = _run([iac_python, "-c", _PARSE_SCRIPT, "main.bicep"], cwd=copy)
    assert result.returncode != 0
    assert "UnexpectedToken" in result.stderr or "UnexpectedCharacters" in result.stderr


@pytest.mark.slow
def test_checkov_alone_reports_a_syntax_error_only_as_a_parsing_error(iac_python, tmp_path):
    """Why check.sh parses first and also reads parsing_errors: checkov's exit status stays clean."""
    report = _checkov_report(iac_python, _copy_with_syntax_error(tmp_path))
    assert report["summary"]["parsing_errors"] >= 1
    assert not report["results"].get("failed_checks")


@pytest.mark.slow
def test_check_script_passes_on_the_templates(iac_python):
    result = _run(["bash", INFRA / "check.sh"], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed 0" in result.stdout and "parsing errors 0" in result.stdout


def test_check_script_fails_on_a_syntax_error(iac_python, tmp_path):
    result = _run(["bash", INFRA / "check.sh", _copy_with_syntax_error(tmp_path)], cwd=ROOT)
    assert result.returncode != 0
    assert "main.bicep" in result.stderr
