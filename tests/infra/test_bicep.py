"""The Bicep templates: they parse, the resource graph is wired as designed, and checkov finds nothing.

pycep and checkov live in their own venv (.venv-iac, created by ``infra/check.sh``) because checkov's pins
clash with the main stack, so every parse runs there in a subprocess. Without that venv these tests skip,
unless CHATFT_REQUIRE_IAC=1 (CI), where its absence fails.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.bicep import (
    ACR_PULL,
    COGNITIVE_SERVICES_USER,
    CONTRIBUTOR,
    INFRA,
    ML_API_VERSION,
    STORAGE_BLOB_DATA_READER,
    bicep_files,
    body_of,
    module_of,
    ref,
    resources_of,
    wired,
)


def test_every_bicep_file_parses(parsed):
    assert sorted(parsed) == bicep_files(INFRA)
    assert "main.bicep" in parsed and len(parsed) > 5


def test_main_calls_every_module_and_modules_follow_the_contract(parsed):
    main = parsed["main.bicep"]
    called = {m["detail"]["path"] for m in main["modules"].values()}
    assert called == {name for name in parsed if name.startswith("modules/")}, "a module file is never called"
    assert "resources" not in main, "main.bicep only wires modules; resources belong in modules/"
    for symbol, module in main["modules"].items():
        tree, params = parsed[module["detail"]["path"]], module["config"]["params"]
        assert "baseName" in tree["parameters"] and params["baseName"] == "baseName", symbol
        tracked = any("location" in body_of(r) for r in tree.get("resources", {}).values() if not r["existing"])
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
        ("content_safety", "cs-"),
    ],
)
def test_resource_names_carry_a_type_prefix(module, prefix):
    text = (INFRA / "modules" / f"{module}.bicep").read_text()
    assert f"'{prefix}${{baseName}}" in text


def test_workspace_is_wired_to_its_dependencies(parsed):
    workspaces = resources_of(parsed["modules/aml_workspace.bicep"], "Microsoft.MachineLearningServices/workspaces")
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
    assert (
        wired(parsed, "workspace").items()
        >= {
            "storageAccountId": "storage.outputs.id",
            "keyVaultId": "keyVault.outputs.id",
            "applicationInsightsId": "appInsights.outputs.id",
            "containerRegistryId": "registry.outputs.id",
        }.items()
    )


def test_one_machine_learning_api_version_everywhere(parsed):
    versions = {
        (name, r["api_version"])
        for name, tree in parsed.items()
        for r in tree.get("resources", {}).values()
        if r["type"].startswith("Microsoft.MachineLearningServices/")
    }
    assert versions and {v for _, v in versions} == {ML_API_VERSION}, versions


def test_compute_identity_is_user_assigned_and_exposes_its_client_id(parsed):
    identities = resources_of(
        parsed["modules/managed_identity.bicep"], "Microsoft.ManagedIdentity/userAssignedIdentities"
    )
    assert len(identities) == 1
    outputs = parsed["main.bicep"]["outputs"]
    assert ref(outputs["identityClientId"]["value"]) == "identity.outputs.clientId"


def test_role_assignments_grant_the_three_roles_at_the_right_scopes(parsed):
    tree = parsed["modules/role_assignments.bicep"]
    role_ids = {name: var["value"] for name, var in tree["variables"].items()}
    existing = {name: r["type"] for name, r in tree["resources"].items() if r["existing"]}
    assignments = resources_of(tree, "Microsoft.Authorization/roleAssignments")
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
            assert ref(base) == f"{scope}.id", name
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
    params = module_of(parsed, "roleAssignments")["config"]["params"]
    assert ref(params["principalId"]) == "identity.outputs.principalId"
    assert ref(params["storageAccountName"]) == "storage.outputs.name"
    assert ref(params["containerRegistryName"]) == "registry.outputs.name"


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
    assert {name: ref(outputs[name]["value"]) for name in expected} == expected


def test_content_safety_account_is_entra_only_and_the_endpoint_identity_may_analyze(parsed):
    tree = parsed["modules/content_safety.bicep"]
    (account,) = resources_of(tree, "Microsoft.CognitiveServices/accounts").values()
    config = body_of(account)
    assert config["kind"] == "ContentSafety"
    assert config["properties"]["disableLocalAuth"] is True  # no keys: the endpoint authenticates as its identity
    assert config["properties"]["customSubDomainName"] == "accountName"  # Entra ID tokens need a custom subdomain
    (assignment,) = resources_of(tree, "Microsoft.Authorization/roleAssignments").values()
    role = assignment["config"]["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert tree["variables"][role]["value"] == COGNITIVE_SERVICES_USER
    assert assignment["config"]["scope"] == "account"
    assert assignment["config"]["properties"]["principalId"] == "endpointPrincipalId"
    params = module_of(parsed, "contentSafety")["config"]["params"]
    # The endpoint runs as the compute identity (deploy_endpoint's endpoint_identity input).
    assert ref(params["endpointPrincipalId"]) == "identity.outputs.principalId"
    outputs = parsed["main.bicep"]["outputs"]
    assert ref(outputs["contentSafetyEndpoint"]["value"]) == "contentSafety.outputs.endpoint"
    assert ref(outputs["identityId"]["value"]) == "identity.outputs.id"


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
