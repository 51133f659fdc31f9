"""The registry's pointer to the model that serves: the ``champion`` alias, with a tag fallback for Azure ML.

Locally (MLflow on SQLite) the pointer is an MLflow registered-model alias, so ``models:/chat-ft@champion``
resolves anywhere MLflow does. Azure ML's MLflow registry lists version tags among what it supports, but not
aliases (learn.microsoft.com, "Manage models registry in Azure Machine Learning with MLflow", supported
capabilities table). So the pointer falls back to the version tag ``champion=true`` (moved, not copied: the previous
holder loses it), and ``get_champion`` reads it back, when an alias call fails

- on an ``azureml://`` registry, whatever the error (what Azure ML answers there is not published), or
- on any registry, with ``ENDPOINT_NOT_FOUND``: MLflow's REST client's code for a 404 without an MLflow error body,
  i.e. a server that does not serve the alias route (Azure ML answers a route it lacks that way:
  Azure/azure-sdk-for-python#44896). A missing model or alias is ``RESOURCE_DOES_NOT_EXIST``, not this.

Any other failing alias call is an error, not a fallback.

register_model moves the pointer; evaluate reads it to compare the tuned model with the current champion.
"""

from __future__ import annotations

ALIAS = "champion"
NOT_SERVED = "ENDPOINT_NOT_FOUND"  # the error code of a route the server does not have (404, no MLflow error body)


def on_azure(registry_uri: str) -> bool:
    """True for the workspace registry that azureml-mlflow serves (``azureml://...``)."""
    return registry_uri.startswith("azureml:")


def set_champion(client, name: str, version: str, azure: bool) -> str:
    """Point ``champion`` at ``name`` version ``version``; return how: ``"alias"`` or ``"tag"`` (Azure fallback)."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, ALIAS, str(version))
        return "alias"
    except MlflowException as err:
        if not azure and err.error_code != NOT_SERVED:
            raise
    # Tag the new holder first, then untag the old ones: there is never a moment without a champion.
    client.set_model_version_tag(name, str(version), ALIAS, "true")
    for other in client.search_model_versions(f"name='{name}'"):
        if other.tags.get(ALIAS) == "true" and str(other.version) != str(version):
            client.delete_model_version_tag(name, str(other.version), ALIAS)
    return "tag"


def get_champion(client, name: str, azure: bool):
    """The ``ModelVersion`` holding ``champion``, or None when no version of ``name`` holds it yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException as err:
        if not azure and err.error_code != NOT_SERVED:
            # No such model, or no such alias on it: there is simply no champion yet.
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
    tagged = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(ALIAS) == "true"]
    return max(tagged, key=lambda v: int(v.version), default=None)
