"""The Azure ML endpoint's and the serverless endpoint's commands: connection (URL and key), status and teardown.

URL and key come from the environment when both variables are set, else from the workspace; the key is sent as a
bearer token and never printed.
"""

from __future__ import annotations

import argparse
import os

from chatft.local_server import live_deployment
from pipelines.azure.client import connect
from pipelines.endpoint_client import EndpointError, configured
from pipelines.settings import PROJECT_ROOT, load_settings

URL_ENV, KEY_ENV = "CHATFT_ENDPOINT_URL", "CHATFT_ENDPOINT_KEY"


def _keyed_connection(url_env: str, key_env: str, endpoints) -> tuple[str, str]:
    """(url, key) from ``url_env``/``key_env`` when both are set, else from ``endpoints()`` (the workspace's
    online or serverless endpoint operations) for the endpoint the caller names."""
    url, key = os.environ.get(url_env), os.environ.get(key_env)
    if bool(url) != bool(key):
        missing = key_env if url else url_env
        raise EndpointError(f"{missing} is not set: set both {url_env} and {key_env}, or neither to ask the workspace")
    if url:
        return url, key
    operations, name = endpoints()
    return operations.get(name).scoring_uri, operations.get_keys(name).primary_key


def azure_connection(name: str, ml_client=None) -> dict:
    url, key = _keyed_connection(URL_ENV, KEY_ENV, lambda: (connect(ml_client).online_endpoints, name))
    return {"url": url, "headers": {"Authorization": f"Bearer {key}"}, "label": f"{name} (Azure ML)"}


def _state(value) -> str:
    return str(getattr(value, "value", value))


def status_azure(name: str, ml_client=None) -> int:
    client = connect(ml_client)
    endpoint = client.online_endpoints.get(name)
    # The SDK reports states as enums (EndpointProvisioningState.SUCCEEDED in an f-string): print their value.
    print(f"{name}: {endpoint.scoring_uri}  ({_state(endpoint.provisioning_state)})")
    for deployment in client.online_deployments.list(endpoint_name=name):
        share = (endpoint.traffic or {}).get(deployment.name, 0)
        model = (deployment.tags or {}).get("model", deployment.model)
        print(f"  {deployment.name:<6} {share:>3}%  {model}  {_state(deployment.provisioning_state)}")
    return (
        0
        if _state(endpoint.provisioning_state) == "Succeeded" and live_deployment({"traffic": endpoint.traffic})
        else 1
    )


def teardown_azure(name: str, delete_model: bool, ml_client=None) -> int:
    client = connect(ml_client)
    models = {
        (deployment.tags or {}).get("model", "").split(":")[0]
        for deployment in client.online_deployments.list(endpoint_name=name)
    } - {""}
    print(f"deleting the Azure ML endpoint {name} and its deployments ...", flush=True)
    client.online_endpoints.begin_delete(name=name).result()
    print(f"deleted {name}")
    if delete_model:
        # azure-ai-ml has no hard delete for model versions; archived ones are hidden and can be restored.
        for model in sorted(models or {configured("register_model", "model_name", "azure")}):
            for version in client.models.list(name=model):
                client.models.archive(name=model, version=version.version)
            print(f"archived every version of the registered model {model}")
    else:
        print("the registered model stays (--delete-model / DELETE_MODEL=1 archives it)")
    return 0


# ---- serverless (pipelines/azure/serverless/) -----------------------------------------------------------------
SERVERLESS_URL_ENV, SERVERLESS_KEY_ENV = "CHATFT_SERVERLESS_URL", "CHATFT_SERVERLESS_KEY"


def serverless_preset():
    from pipelines.azure.serverless import SERVERLESS_PRESET, serverless_settings

    settings = load_settings(PROJECT_ROOT / SERVERLESS_PRESET)
    return settings, serverless_settings(settings)


def serverless_connection(name: str, ml_client=None) -> dict:
    def operations():
        return connect(ml_client).serverless_endpoints, name

    url, key = _keyed_connection(SERVERLESS_URL_ENV, SERVERLESS_KEY_ENV, operations)
    return {"url": url, "headers": {"Authorization": f"Bearer {key}"}, "label": f"{name} (serverless)", "api": "openai"}


def status_serverless(name: str, ml_client=None) -> int:
    endpoint = connect(ml_client).serverless_endpoints.get(name)
    print(f"{name}: {endpoint.scoring_uri}  ({endpoint.provisioning_state}, model {endpoint.model_id})")
    return 0 if (endpoint.provisioning_state or "").lower() == "succeeded" else 1


def azure_name(args: argparse.Namespace) -> str:
    return args.name or configured("deploy_endpoint", "endpoint_name", "azure")


def serverless_name(args: argparse.Namespace) -> str:
    return args.name or serverless_preset()[1].endpoint_name


def manage_azure(args: argparse.Namespace, ml_client=None) -> int:
    """status / teardown of the Azure ML endpoint (stop and monitor are local only)."""
    name = azure_name(args)
    if args.command == "stop":
        raise EndpointError("stop is local only; `teardown --target azure` deletes the Azure endpoint")
    if args.command == "monitor":
        raise EndpointError(
            "monitor is local only; on Azure ML the request records are in Application Insights and the "
            "model inputs/outputs in the data collector's storage"
        )
    if args.command == "teardown":
        return teardown_azure(name, args.delete_model, ml_client)
    return status_azure(name, ml_client)


def manage_serverless(args: argparse.Namespace, ml_client=None) -> int:
    """status / teardown of the serverless endpoint (stop and monitor are local only)."""
    from pipelines.azure.serverless import teardown

    settings, options = serverless_preset()
    name = args.name or options.endpoint_name
    if args.command == "stop":
        raise EndpointError("stop is local only; `teardown --target serverless` deletes the serverless endpoint")
    if args.command == "monitor":
        raise EndpointError("monitor is local only; a serverless endpoint keeps its metrics in Azure Monitor")
    if args.command == "teardown":
        return teardown(settings, args.delete_subscription, connect(ml_client), name=name)
    return status_serverless(name, ml_client)
