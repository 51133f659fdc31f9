"""The Azure ML REST simulation itself: a real MLClient talks to it, and it refuses what it does not know."""

from __future__ import annotations

import pytest

from tests.helpers.azure_transport import WORKSPACE_ID, UnexpectedRequest


def test_a_real_mlclient_reads_spec_shaped_payloads_through_the_sdk_deserializers(azure_sim):
    ml_client = azure_sim.client()
    workspace = ml_client.workspaces.get(ml_client.workspace_name)
    assert (workspace.name, workspace.location) == ("mlw-test", "eastus2")
    sizes = {size.name: size for size in ml_client.compute.list_sizes(location="eastus2")}
    # The SDK copies the wire's camelCase keys onto its VmSize (azure-ai-ml 1.35.2): what preflight has to read.
    assert vars(sizes["Standard_NC8as_T4_v3"])["vCPUs"] == 8
    assert sizes["Standard_NC8as_T4_v3"].v_cp_us is None
    (get_sizes,) = azure_sim.sent("GET", "/locations/eastus2/vmSizes$")
    assert get_sizes.api_version and get_sizes.headers["Authorization"].startswith("Bearer ")


def test_a_long_running_put_is_polled_through_azure_asyncoperation_until_it_succeeds(azure_sim):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    azure_sim.polls = 2
    ml_client = azure_sim.client()
    endpoint = ml_client.online_endpoints.begin_create_or_update(ManagedOnlineEndpoint(name="chat-ft")).result()
    assert endpoint.name == "chat-ft" and endpoint.provisioning_state == "Succeeded"
    polls = azure_sim.sent("GET", "/mfeOperationsStatus/")
    assert len(polls) == 3  # InProgress, InProgress, Succeeded
    (put,) = azure_sim.sent("PUT", "/onlineEndpoints/chat-ft$")
    assert put.body["properties"]["authMode"] == "Key"
    assert azure_sim.get("onlineEndpoints", "chat-ft")["id"] == f"{WORKSPACE_ID}/onlineEndpoints/chat-ft"


def test_a_delete_is_polled_through_its_location_header(azure_sim):
    azure_sim.add("onlineEndpoints", "chat-ft")
    azure_sim.client().online_endpoints.begin_delete(name="chat-ft").result()
    assert [r.status for r in azure_sim.sent("GET", "/mfeOperationResults/")] == [202, 200]
    assert azure_sim.get("onlineEndpoints", "chat-ft") is None


def test_a_missing_asset_is_the_services_404_and_the_sdk_raises_resource_not_found(azure_sim):
    from azure.core.exceptions import ResourceNotFoundError

    with pytest.raises(ResourceNotFoundError):
        azure_sim.client().environments.get("chatft-train", "1")


def test_a_request_without_a_route_fails_loudly_and_is_kept(azure_sim):
    with pytest.raises(UnexpectedRequest, match="no route for GET .*/batchEndpoints/b"):
        azure_sim.client().batch_endpoints.get("b")
    assert [str(r) for r in azure_sim.unexpected] == ["GET {ws}/batchEndpoints/b"]
    azure_sim.unexpected.clear()  # expected here: the fixture fails any other test that leaves one


def test_an_endpoints_deployments_are_listed_read_and_deleted_through_the_sdk(azure_sim):
    from azure.core.exceptions import ResourceNotFoundError

    azure_sim.add("onlineEndpoints", "chat-ft", properties={"authMode": "Key", "traffic": {"blue": 100}})
    azure_sim.add(
        "onlineEndpoints/chat-ft/deployments",
        "blue",
        properties={
            "endpointComputeType": "Managed",
            "model": "azureml:chat-ft:3",
            "instanceType": "Standard_NC8as_T4_v3",
            "scaleSettings": {"scaleType": "Default"},
        },
        sku={"name": "Default", "tier": "Standard", "capacity": 1},  # as the ManagedOnlineDeployment examples show
        location="eastus2",
    )
    ml_client = azure_sim.client()
    (listed,) = ml_client.online_deployments.list(endpoint_name="chat-ft")
    assert (listed.name, listed.instance_type) == ("blue", "Standard_NC8as_T4_v3")
    ml_client.online_deployments.begin_delete(name="blue", endpoint_name="chat-ft").result()
    with pytest.raises(ResourceNotFoundError):
        ml_client.online_deployments.get(name="blue", endpoint_name="chat-ft")
