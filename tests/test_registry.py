"""chatft.registry: the champion pointer, and its tag fallback on Azure ML, against a fake registry."""

from __future__ import annotations

import pytest

from chatft import registry as champion


class AzureLikeRegistry:
    """A stand-in for MlflowClient on an azureml:// registry, whose alias API is not supported (a simulation:
    what the service answers is not known here, only that aliases are missing from its documented capabilities)."""

    def __init__(self, versions: int):
        from mlflow.entities.model_registry import ModelVersion

        self.versions = {str(v): ModelVersion("chat-ft", str(v), 0, tags={}) for v in range(1, versions + 1)}

    def set_registered_model_alias(self, *args):
        from mlflow.exceptions import MlflowException

        raise MlflowException("alias API not available")  # a code other than ENDPOINT_NOT_FOUND: INTERNAL_ERROR

    get_model_version_by_alias = set_registered_model_alias

    def set_model_version_tag(self, name, version, key, value):
        self.versions[version]._tags[key] = value

    def delete_model_version_tag(self, name, version, key):
        del self.versions[version]._tags[key]

    def search_model_versions(self, filter_string):
        assert filter_string == "name='chat-ft'"
        return list(self.versions.values())


def test_azure_falls_back_to_a_champion_tag_that_moves():
    client = AzureLikeRegistry(versions=3)
    assert champion.get_champion(client, "chat-ft", azure=True) is None
    assert champion.set_champion(client, "chat-ft", "2", azure=True) == "tag"
    assert champion.get_champion(client, "chat-ft", azure=True).version == "2"
    assert champion.set_champion(client, "chat-ft", "3", azure=True) == "tag"
    assert champion.get_champion(client, "chat-ft", azure=True).version == "3"
    assert [v for v, mv in client.versions.items() if mv.tags.get("champion") == "true"] == ["3"]


def test_a_failing_alias_call_off_azure_is_an_error():
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="alias API not available"):
        champion.set_champion(AzureLikeRegistry(versions=1), "chat-ft", "1", azure=False)


def test_only_azureml_registries_get_the_fallback():
    assert champion.on_azure("azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/r")
    assert not champion.on_azure("sqlite:///outputs/mlflow.db")
    assert not champion.on_azure("databricks")
