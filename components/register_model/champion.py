"""The registry's pointer to the model that serves: the ``champion`` alias, with a tag fallback for Azure ML.

Locally (MLflow on SQLite) the pointer is an MLflow registered-model alias, so ``models:/chat-ft@champion``
resolves anywhere MLflow does. Azure ML's MLflow registry lists version tags among what it supports, but not
aliases (learn.microsoft.com, "Manage models registry in Azure Machine Learning with MLflow", supported
capabilities table). On an ``azureml://`` registry an alias call that fails therefore falls back to the version tag
``champion=true`` (moved, not copied: the previous holder loses it), and ``get_champion`` reads it back. Anywhere
else a failing alias call is an error, not a fallback.

Other steps that need the current champion (e.g. evaluate comparing against it) can take this file through
``additional_includes: [../register_model/champion.py]`` and call ``get_champion``.
"""

from __future__ import annotations

ALIAS = "champion"


def on_azure(registry_uri: str) -> bool:
    """True for the workspace registry that azureml-mlflow serves (``azureml://...``)."""
    return registry_uri.startswith("azureml:")


def set_champion(client, name: str, version: str, azure: bool) -> str:
    """Point ``champion`` at ``name`` version ``version``; return how: ``"alias"`` or ``"tag"`` (Azure fallback)."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, ALIAS, str(version))
        return "alias"
    except MlflowException:
        if not azure:
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
        # No such model, or no such alias on it: there is simply no champion yet.
        if not azure and err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        if not azure:
            return None
    tagged = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(ALIAS) == "true"]
    return max(tagged, key=lambda v: int(v.version), default=None)
