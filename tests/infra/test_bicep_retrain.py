"""The Bicep of the retraining trigger: Event Grid only enqueues, the function runs as its own identity with its
five roles."""

from __future__ import annotations

from tests.helpers.bicep import (
    AZUREML_DATA_SCIENTIST,
    INFRA,
    STORAGE_BLOB_DATA_OWNER,
    STORAGE_BLOB_DATA_READER,
    STORAGE_QUEUE_DATA_CONTRIBUTOR,
    STORAGE_QUEUE_DATA_MESSAGE_SENDER,
    STORAGE_TABLE_DATA_CONTRIBUTOR,
    module_of,
    ref,
    resources_of,
    wired,
)


def test_event_grid_only_enqueues_blob_created_events_for_the_retraining_function(parsed):
    """Event Grid delivers to a Storage queue, not to the function: it never waits on a submission (and redelivers
    it after ~30 s), and the subscription needs no published function, so there is one deployment, not two."""
    assert "retrainFunctionDeployed" not in parsed["main.bicep"]["parameters"]
    assert not any("secure" in str(p["decorators"]) for p in parsed["main.bicep"]["parameters"].values()), (
        "the retraining path needs no secret parameter: the queue is addressed by resource id"
    )

    tree = parsed["modules/event_grid.bicep"]
    (topic,) = resources_of(tree, "Microsoft.EventGrid/systemTopics").values()
    assert topic["config"]["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic["config"]["identity"] == {"type": "SystemAssigned"}
    (subscription,) = resources_of(tree, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
    assert "condition" not in subscription["config"], "the queue exists from the first deployment"
    body = subscription["config"]["properties"]
    assert "destination" not in body, "delivery goes through the topic's identity (the account has shared keys off)"
    delivery = body["deliveryWithResourceIdentity"]
    assert delivery["identity"] == {"type": "SystemAssigned"}
    assert delivery["destination"]["endpointType"] == "StorageQueue"
    assert ref(delivery["destination"]["properties"]["resourceId"]) == "queueStorage.id"
    assert ref(delivery["destination"]["properties"]["queueName"]) == "queue.name"
    assert body["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert body["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/${trainingDataContainerName}/blobs/"
    assert body["deadLetterDestination"]["properties"]["blobContainerName"] == "deadLetterContainerName"

    # The topic may only send messages, and only to this queue; the subscription waits for that grant.
    (grant,) = resources_of(tree, "Microsoft.Authorization/roleAssignments").values()
    assert grant["config"]["scope"] == "queue"
    role_var = grant["config"]["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
    assert tree["variables"][role_var]["value"] == STORAGE_QUEUE_DATA_MESSAGE_SENDER
    assert ref(grant["config"]["properties"]["principalId"]) == "systemTopic.identity.principalId"
    assert subscription["config"]["dependsOn"] == ["topicSendsToQueue"]

    # One queue, named once: the retrain_queue module's output feeds Event Grid and the function's app setting.
    queue_tree = parsed["modules/retrain_queue.bicep"]
    (queue,) = resources_of(queue_tree, "Microsoft.Storage/storageAccounts/queueServices/queues").values()
    assert queue["config"]["name"] == "queueName"
    params = module_of(parsed, "eventGrid")["config"]["params"]
    assert ref(params["trainingDataContainerName"]) == "storage.outputs.trainingDataContainerName"
    assert ref(params["queueStorageName"]) == "functionStorage.outputs.name"
    assert ref(params["queueName"]) == "retrainQueue.outputs.queueName"
    assert ref(module_of(parsed, "retrainQueue")["config"]["params"]["functionStorageName"]) == (
        "functionStorage.outputs.name"
    )
    app_params = module_of(parsed, "retrainFunction")["config"]["params"]
    assert ref(app_params["retrainQueueName"]) == "retrainQueue.outputs.queueName"
    assert ref(app_params["lockContainerName"]) == "retrainQueue.outputs.lockContainerName"
    (app,) = resources_of(parsed["modules/function_app.bicep"], "Microsoft.Web/sites").values()
    settings = {s["name"]: s["value"] for s in app["config"]["properties"]["siteConfig"]["appSettings"]}
    assert settings["CHATFT_RETRAIN_QUEUE"] == "retrainQueueName"
    assert settings["CHATFT_LOCK_CONTAINER"] == "lockContainerName"
    assert settings["CHATFT_LOCK_ACCOUNT_URL"] == "functionStorageBlobEndpoint"
    source = (INFRA / "retrain_function" / "function_app.py").read_text()
    assert 'queue_name="%CHATFT_RETRAIN_QUEUE%"' in source and 'connection="AzureWebJobsStorage"' in source


def test_retrain_function_runs_python_on_flex_consumption_as_its_own_identity(parsed):
    tree = parsed["modules/function_app.bicep"]
    (plan,) = resources_of(tree, "Microsoft.Web/serverfarms").values()
    assert plan["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    (app,) = resources_of(tree, "Microsoft.Web/sites").values()
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
    (account,) = resources_of(parsed["modules/function_storage.bicep"], "Microsoft.Storage/storageAccounts").values()
    assert account["config"]["properties"]["allowSharedKeyAccess"] is False

    params = module_of(parsed, "retrainFunction")["config"]["params"]
    assert ref(params["identityId"]) == "retrainIdentity.outputs.id"
    assert ref(params["identityClientId"]) == "retrainIdentity.outputs.clientId"
    assert module_of(parsed, "retrainIdentity")["config"]["params"]["purpose"] == "retrain"


def test_retrain_identity_gets_exactly_its_five_roles(parsed):
    tree = parsed["modules/retrain_role_assignments.bicep"]
    role_ids = {name: var["value"] for name, var in tree["variables"].items()}
    existing = {name: r["type"] for name, r in tree["resources"].items() if r["existing"]}
    granted = set()
    for name, assignment in resources_of(tree, "Microsoft.Authorization/roleAssignments").items():
        config = assignment["config"]
        role_var = config["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        assert config["name"]["function"]["type"] == "guid", name
        assert ref(config["name"]["function"]["parameters"]["base_string"]) == f"{config['scope']}.id", name
        assert config["properties"]["principalType"] == "ServicePrincipal", name
        granted.add((role_ids[role_var], existing[config["scope"]], config["scope"]))
    assert granted == {
        (STORAGE_BLOB_DATA_READER, "Microsoft.Storage/storageAccounts", "trainingStorage"),
        (STORAGE_BLOB_DATA_OWNER, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (STORAGE_QUEUE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (STORAGE_TABLE_DATA_CONTRIBUTOR, "Microsoft.Storage/storageAccounts", "functionStorage"),
        (AZUREML_DATA_SCIENTIST, "Microsoft.MachineLearningServices/workspaces", "workspace"),
    }
    assert (
        wired(parsed, "retrainRoles").items()
        >= {
            "principalId": "retrainIdentity.outputs.principalId",
            "trainingStorageName": "storage.outputs.name",
            "functionStorageName": "functionStorage.outputs.name",
            "workspaceName": "workspace.outputs.name",
        }.items()
    )
