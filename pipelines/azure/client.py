"""The one way this project builds an ``MLClient``: make submit, preflight, schedule, retrain and pipelines/endpoint.py.

The workspace comes from ``.azureml/config.json`` (as written by the Studio's "download config") or from the
environment variables AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME; credentials from
``DefaultAzureCredential`` (az login, a managed identity), or in GitHub Actions from the job's OIDC tokens
(``pipelines/github_oidc.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

from chatft.errors import UsageError
from pipelines.settings import PROJECT_ROOT

WORKSPACE_ENV = ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME")


class WorkspaceConfigError(UsageError, RuntimeError):
    """No workspace is configured; the message says both ways to configure one."""


def workspace_client(project_root: Path = PROJECT_ROOT, credential=None, **kwargs):
    """An MLClient for the configured workspace. Building it does no I/O; the first call does. ``kwargs`` go to
    MLClient and on to its azure-core clients (``transport=``, ``retry_total=`` ...)."""
    from azure.ai.ml import MLClient

    from pipelines import sdk_private

    sdk_private.fast_experimental_check()
    if credential is None:
        from azure.identity import DefaultAzureCredential

        from pipelines import github_oidc

        # In GitHub Actions, a credential that fetches a new OIDC token for each Entra token: a run followed for
        # hours outlives any single login (Azure/login#180).
        credential = github_oidc.credential_from_env() or DefaultAzureCredential()
    config = project_root / ".azureml" / "config.json"
    if config.is_file():
        return MLClient.from_config(credential=credential, path=str(config), **kwargs)
    missing = [name for name in WORKSPACE_ENV if not os.environ.get(name)]
    if missing:
        raise WorkspaceConfigError(
            f"no Azure ML workspace configured: create {config.relative_to(project_root)} "
            f"(Studio → workspace → Download config.json) or set {', '.join(missing)}"
        )
    return MLClient(
        credential,
        subscription_id=os.environ["AZURE_SUBSCRIPTION_ID"],
        resource_group_name=os.environ["AZURE_RESOURCE_GROUP"],
        workspace_name=os.environ["AZUREML_WORKSPACE_NAME"],
        **kwargs,
    )


def connect(ml_client=None):
    """The given client, or the configured workspace's; a WorkspaceConfigError says how to configure one."""
    if ml_client is not None:
        return ml_client
    try:
        return workspace_client()
    except WorkspaceConfigError as err:
        raise WorkspaceConfigError(f"Cannot reach Azure ML: {err}") from None
