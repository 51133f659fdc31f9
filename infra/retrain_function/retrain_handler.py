"""What the retraining function does with one blob-created event, kept apart from the Functions binding so the
tests can run it: download the training-data container's JSONL files, then ``pipelines.retrain.retrain`` on them,
which registers and submits only when their fingerprint is new.

Settings (app settings, set by infra/modules/function_app.bicep): CHATFT_TRAINING_ACCOUNT_URL and
CHATFT_TRAINING_CONTAINER say where the data is; AZURE_CLIENT_ID, AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and
AZUREML_WORKSPACE_NAME say who the function is and where it submits. CHATFT_PRESET (optional) picks the preset.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from pipelines.azure_backend import SubmitOptions
from pipelines.retrain import retrain
from pipelines.settings import PROJECT_ROOT, load_settings

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
DEFAULT_PRESET = "pipelines/config/azure.yaml"
log = logging.getLogger("chatft.retrain")


class RetrainFailed(RuntimeError):
    """The retraining decision or submission failed; raising it makes Event Grid retry the event."""


def container_client(account_url: str, container: str):
    from azure.identity import DefaultAzureCredential
    from azure.storage.blob import ContainerClient

    # AZURE_CLIENT_ID selects the function's user-assigned identity.
    return ContainerClient(account_url, container, credential=DefaultAzureCredential())


def download_jsonl(client, target: Path) -> int:
    """Every .jsonl blob of the container under ``target``, keeping its path; the number downloaded."""
    count = 0
    for blob in client.list_blobs():
        if not blob.name.endswith(".jsonl"):
            continue
        path = target / blob.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            client.download_blob(blob.name).readinto(handle)
        count += 1
    return count


def handle_event(event_type: str, subject: str, client=None, ml_client=None) -> int:
    """0 when there is nothing to do or the pipeline was submitted; raises RetrainFailed otherwise."""
    container = os.environ["CHATFT_TRAINING_CONTAINER"]
    prefix = f"/blobServices/default/containers/{container}/blobs/"
    if event_type != BLOB_CREATED or not subject.startswith(prefix):
        log.info("Ignored: %s on %s is not a new blob in %s", event_type, subject, container)
        return 0
    client = client or container_client(os.environ["CHATFT_TRAINING_ACCOUNT_URL"], container)
    settings = load_settings(PROJECT_ROOT / os.environ.get("CHATFT_PRESET", DEFAULT_PRESET))
    with tempfile.TemporaryDirectory(prefix="chatft-retrain-") as work:
        data = Path(work) / "data"
        count = download_jsonl(client, data)
        if count == 0:
            log.info("Ignored: %s holds no .jsonl files", container)
            return 0
        log.info("Downloaded %d JSONL file(s) from %s", count, container)
        # No streaming: the function returns once the pipeline is submitted; the run goes on in Azure ML.
        options = SubmitOptions(data=str(data), stream=False)
        code = retrain(settings, Path(work) / "outputs", options, ml_client=ml_client)
    if code != 0:
        raise RetrainFailed(f"retrain exited with {code} for {subject}; see the log above")
    return 0
