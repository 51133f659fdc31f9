"""What the retraining function does with one queued blob-created event, kept apart from the Functions binding so
the tests can run it.

Event Grid does not call this code: it drops each event into a Storage queue (``infra/modules/event_grid.bicep``)
and returns, so nothing waits on a submission and nothing is redelivered because a submission was slow. The worker
takes one message at a time (``host.json``) and, across instances, one decision at a time (``BlobLock``: a blob
lease, because Flex Consumption cannot be held to one instance). A decision:
  1. waits until the training-data container has been quiet for ``CHATFT_QUIET_SECONDS`` (a 5-file upload is five
     events but one quiet period: the first worker sees all five files);
  2. downloads the container's JSONL files and calls ``pipelines.retrain.retrain`` on them, which registers and
     submits only when their fingerprint is new. Every later message of the same upload, and every redelivery,
     finds that fingerprint registered and does nothing.

Settings (app settings, set by infra/modules/function_app.bicep): CHATFT_TRAINING_ACCOUNT_URL and
CHATFT_TRAINING_CONTAINER say where the data is; CHATFT_LOCK_ACCOUNT_URL and CHATFT_LOCK_CONTAINER where the lock
blob lives; AZURE_CLIENT_ID, AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME say who the
function is and where it submits. CHATFT_PRESET and CHATFT_QUIET_SECONDS are optional.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from pipelines.azure.cli import SubmitOptions
from pipelines.retrain import retrain
from pipelines.settings import PROJECT_ROOT, load_settings

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
DEFAULT_PRESET = "pipelines/config/azure.yaml"
LOCK_BLOB = "retrain.lock"
# Time budget of one invocation, inside host.json's functionTimeout of 30 min:
#   waiting for the lock  <= 10 min (another worker deciding: a quiet wait plus a submission of a few minutes)
#   waiting for quiet     <= 10 min (an upload still going after that is picked up by its own later events)
#   the submission itself:   minutes (register what changed, create the job; no streaming)
# 10 + 10 + a few leaves margin under 30; a message that runs out of either wait is retried by the queue.
LOCK_WAIT_SECONDS = 600
MAX_QUIET_WAIT_SECONDS = 600
# 60 s of no new .jsonl blob: `az storage blob upload-batch` and azcopy start the next file within seconds, and
# Event Grid delivers a BlobCreated within seconds of the write (its median latency is sub-second).
DEFAULT_QUIET_SECONDS = 60
# A blob lease is 15-60 s; renewed every third of it, so one missed renewal still leaves 20 s.
LEASE_SECONDS = 60
log = logging.getLogger("chatft.retrain")


class RetrainFailed(RuntimeError):
    """The retraining decision or submission failed; raising it makes the queue retry the message."""


class LockBusy(RetrainFailed):
    """Another worker held the lock for longer than LOCK_WAIT_SECONDS."""


def _credential():
    from azure.identity import DefaultAzureCredential

    # AZURE_CLIENT_ID selects the function's user-assigned identity.
    return DefaultAzureCredential()


def container_client(account_url: str, container: str):
    from azure.storage.blob import ContainerClient

    return ContainerClient(account_url, container, credential=_credential())


def lock_blob_client(account_url: str, container: str):
    from azure.storage.blob import BlobClient

    return BlobClient(account_url, container, LOCK_BLOB, credential=_credential())


class BlobLock:
    """One holder at a time across every instance: a lease on one blob, renewed while held, released on exit.

    A worker that dies loses the lease within LEASE_SECONDS, so nobody waits on a dead holder for longer.
    """

    def __init__(self, blob, wait_seconds: float = LOCK_WAIT_SECONDS, sleep=time.sleep, clock=time.monotonic):
        self.blob, self.wait_seconds, self.sleep, self.clock = blob, wait_seconds, sleep, clock
        self.lease = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> BlobLock:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        with contextlib.suppress(ResourceExistsError):  # the lock blob is created once; later calls get 409
            self.blob.upload_blob(b"", overwrite=False)
        deadline = self.clock() + self.wait_seconds
        while True:
            try:
                self.lease = self.blob.acquire_lease(lease_duration=LEASE_SECONDS)
                break
            except HttpResponseError as err:
                if err.status_code != 409:  # 409 LeaseAlreadyPresent: another worker is deciding
                    raise
                if self.clock() >= deadline:
                    raise LockBusy(f"the retraining lock was held for over {self.wait_seconds:.0f} s") from None
                self.sleep(5)
        self._renewer = threading.Thread(target=self._renew, name="retrain-lock-renewal", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_SECONDS / 3):
            try:
                self.lease.renew()
            except Exception:  # logged, not raised: the decision goes on; a lost lease only loses exclusivity
                log.exception("Could not renew the retraining lock's lease")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        try:
            self.lease.release()
        except Exception:  # logged, not raised: the decision is made; an unreleased lease expires in LEASE_SECONDS
            log.exception("Could not release the retraining lock's lease; it expires within %d s", LEASE_SECONDS)


def parse_event(body: bytes | str) -> dict:
    """The Event Grid event of one queue message: JSON, or base64 of JSON (what Event Grid writes to a queue
    today, and what the Functions queue trigger decodes by default); a one-event array is accepted too."""
    text = body.decode() if isinstance(body, bytes) else body
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        try:
            event = json.loads(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"queue message is neither JSON nor base64 JSON: {text[:80]!r}") from None
    if isinstance(event, list) and len(event) == 1:
        event = event[0]
    if not isinstance(event, dict) or "eventType" not in event or "subject" not in event:
        raise ValueError(f"queue message is not an Event Grid event (no eventType/subject): {text[:80]!r}")
    return event


def newest_jsonl(client) -> datetime | None:
    """When the newest .jsonl blob of the container was written; None when it holds none."""
    times = [blob.last_modified for blob in client.list_blobs() if blob.name.endswith(".jsonl")]
    return max(times, default=None)


def wait_until_quiet(
    client, quiet_seconds: float, max_wait: float = MAX_QUIET_WAIT_SECONDS, sleep=time.sleep, now=None
) -> None:
    """Return once no .jsonl blob has been written for ``quiet_seconds``: an upload of several files ends first."""
    now = now or (lambda: datetime.now(UTC))
    waited = 0.0
    while True:
        newest = newest_jsonl(client)
        if newest is None:
            return
        remaining = quiet_seconds - (now() - newest).total_seconds()
        if remaining <= 0:
            return
        if waited + remaining > max_wait:
            raise RetrainFailed(f"the container was still being written after {max_wait:.0f} s; retried later")
        log.info("Waiting %.0f s for the upload to finish", remaining)
        sleep(remaining)
        waited += remaining


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


def decide(client, ml_client=None) -> int:
    """Download the container's data and retrain if its fingerprint is new (``pipelines.retrain``)."""
    settings = load_settings(PROJECT_ROOT / os.environ.get("CHATFT_PRESET", DEFAULT_PRESET))
    container = os.environ["CHATFT_TRAINING_CONTAINER"]
    with tempfile.TemporaryDirectory(prefix="chatft-retrain-") as work:
        data = Path(work) / "data"
        count = download_jsonl(client, data)
        if count == 0:
            log.info("Ignored: %s holds no .jsonl files", container)
            return 0
        log.info("Downloaded %d JSONL file(s) from %s", count, container)
        # No streaming: the function returns once the pipeline is submitted; the run goes on in Azure ML.
        return retrain(settings, Path(work) / "outputs", SubmitOptions(data=str(data), stream=False), ml_client)


def handle_message(body: bytes | str, client=None, lock=None, ml_client=None, sleep=time.sleep, now=None) -> int:
    """0 when there is nothing to do or the pipeline was submitted; raises RetrainFailed otherwise (the queue
    retries the message, then moves it to the poison queue)."""
    event = parse_event(body)
    container = os.environ["CHATFT_TRAINING_CONTAINER"]
    prefix = f"/blobServices/default/containers/{container}/blobs/"
    if event["eventType"] != BLOB_CREATED or not event["subject"].startswith(prefix):
        log.info("Ignored: %s on %s is not a new blob in %s", event["eventType"], event["subject"], container)
        return 0
    client = client or container_client(os.environ["CHATFT_TRAINING_ACCOUNT_URL"], container)
    lock = lock or BlobLock(
        lock_blob_client(os.environ["CHATFT_LOCK_ACCOUNT_URL"], os.environ["CHATFT_LOCK_CONTAINER"])
    )
    quiet = float(os.environ.get("CHATFT_QUIET_SECONDS", DEFAULT_QUIET_SECONDS))
    with lock:
        wait_until_quiet(client, quiet, sleep=sleep, now=now)
        code = decide(client, ml_client)
    if code != 0:
        raise RetrainFailed(f"retrain exited with {code} for {event['subject']}; see the log above")
    return 0
