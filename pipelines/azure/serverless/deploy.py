"""Step 5 of the serverless path, once the gate passed: the marketplace subscription, the serverless endpoint and
its smoke test; and teardown."""

from __future__ import annotations

from typing import Any

from pipelines import sdk_private
from pipelines.azure.assets import get_or_none
from pipelines.azure.client import workspace_client
from pipelines.azure.serverless.plan import Plan
from pipelines.azure.serverless.settings import (
    SMOKE_REQUEST,
    ServerlessError,
    base_model_version,
    serverless_settings,
)
from pipelines.settings import RunSettings


def fine_tuned_model_id(ml_client, job) -> str:
    """The workspace model the job registered, as serverless endpoints take it (the sample notebook's form)."""
    output = (job.outputs or {}).get("registered_model")
    name = getattr(output, "name", None) or (output or {}).get("name")
    if not name:
        raise ServerlessError(f"job {job.name} ended without a registered_model output; see {job.studio_url}")
    workspace = ml_client.workspaces.get(ml_client.workspace_name)
    guid = sdk_private.workspace_guid(workspace)
    return f"azureml://locations/{workspace.location}/workspaces/{guid}/models/{name}/versions/1"


def deploy(ml_client, plan: Plan, model_id: str) -> Any:
    """The MarketplaceSubscription first when the offer needs one and it is missing, then the ServerlessEndpoint."""
    from azure.ai.ml.entities import MarketplaceSubscription, ServerlessEndpoint

    serverless = plan.serverless
    if serverless.marketplace_subscription:
        if get_or_none(ml_client.marketplace_subscriptions, serverless.subscription_name) is None:
            offer = "/".join(plan.settings.base_model.split("/")[:-2])  # the model id without /versions/<n>
            print(f"  subscribing {serverless.subscription_name} to the marketplace offer of {offer} ...", flush=True)
            ml_client.marketplace_subscriptions.begin_create_or_update(
                MarketplaceSubscription(name=serverless.subscription_name, model_id=offer)
            ).result()
        else:
            print(f"  marketplace subscription {serverless.subscription_name} exists")
    print(f"  creating serverless endpoint {serverless.endpoint_name} for {model_id} ...", flush=True)
    endpoint = ml_client.serverless_endpoints.begin_create_or_update(
        ServerlessEndpoint(name=serverless.endpoint_name, model_id=model_id)
    ).result()
    if (endpoint.provisioning_state or "").lower() != "succeeded":
        raise ServerlessError(f"serverless endpoint {serverless.endpoint_name}: {endpoint.provisioning_state}")
    return endpoint


def chat_completions(url: str, key: str, body: dict, timeout: float = 120) -> dict:
    """POST an OpenAI chat-completions request to a serverless endpoint (the key as Authorization, as the sample)."""
    import requests

    response = requests.post(
        f"{url.rstrip('/')}/v1/chat/completions",
        json=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        timeout=timeout,
    )
    if response.status_code != 200:
        raise ServerlessError(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
    return response.json()


def smoke_test(ml_client, name: str) -> str:
    endpoint = ml_client.serverless_endpoints.get(name)
    key = ml_client.serverless_endpoints.get_keys(name).primary_key
    reply = chat_completions(endpoint.scoring_uri, key, SMOKE_REQUEST)
    try:
        answer = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ServerlessError(f"{endpoint.scoring_uri}: not a chat-completions answer: {str(reply)[:300]}") from None
    if not answer.strip():
        raise ServerlessError(f"{endpoint.scoring_uri}: empty answer to the smoke test")
    return answer


def registry_client_for(settings: RunSettings, ml_client):
    """An MLClient on the model's registry, built with the workspace client's credential (it discovers the registry
    on construction)."""
    from azure.ai.ml import MLClient

    registry, _, _ = base_model_version(settings.base_model)
    return MLClient(sdk_private.client_credential(ml_client), registry_name=registry)


def teardown(settings: RunSettings, delete_subscription: bool, ml_client=None, name: str | None = None) -> int:
    """Delete the serverless endpoint (it bills by the hour while deployed); the subscription only when asked."""
    serverless = serverless_settings(settings)
    name = name or serverless.endpoint_name
    ml_client = ml_client or workspace_client()
    if get_or_none(ml_client.serverless_endpoints, name) is None:
        print(f"{name} does not exist (nothing to delete)")
    else:
        print(f"deleting the serverless endpoint {name} ...", flush=True)
        ml_client.serverless_endpoints.begin_delete(name).result()
        print(f"deleted {name}")
    if delete_subscription:
        ml_client.marketplace_subscriptions.begin_delete(serverless.subscription_name).result()
        print(f"deleted the marketplace subscription {serverless.subscription_name}")
    else:
        print("the marketplace subscription (if any) and the fine-tuned model stay (--delete-subscription deletes it)")
    return 0
