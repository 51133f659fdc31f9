"""The retraining function (infra/retrain_function/), offline: its queue binding, its handler against a fake blob
container, a real BlobClient lock over a fake Blob transport and the recording fake MLClient, its pins, and the
package that ships it with the project code.

The races it must survive (issue 10, defect 6): Event Grid used to call the function and wait ~30 s for it, then
redeliver, while the function submitted synchronously (minutes), with up to 40 instances. Now Event Grid only
enqueues; these tests drive the queue worker the way the host would: a redelivered event arriving while the first
submission is still running, and the five events of a five-file upload.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import azure_backend
from pipelines.settings import load_settings
from tests.helpers.blob_lease_transport import BlobLeaseTransport
from tests.helpers.chat_data import make_conversations
from tests.helpers.fake_azure import AMPLE_QUOTA, FakeMLClient

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = ROOT / "infra" / "retrain_function"
SUBJECT = "/blobServices/default/containers/training-data/blobs/chats-2026-11.jsonl"
T0 = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.syspath_prepend(str(FUNCTION))
    monkeypatch.setenv("CHATFT_TRAINING_CONTAINER", "training-data")
    monkeypatch.setenv("CHATFT_TRAINING_ACCOUNT_URL", "https://sttest.blob.core.windows.net/")
    monkeypatch.delenv("CHATFT_QUIET_SECONDS", raising=False)
    import retrain_handler

    return retrain_handler


class FakeContainer:
    """Stands in for azure.storage.blob.ContainerClient: list_blobs (name, last_modified) and
    download_blob(...).readinto only. ``put`` writes a blob at a time, as an upload would."""

    def __init__(self, blobs: dict[str, bytes] | None = None, written: datetime = T0 - timedelta(hours=1)):
        self.blobs = {name: (data, written) for name, data in (blobs or {}).items()}
        self.downloads: list[str] = []

    def put(self, name: str, data: bytes, when: datetime) -> None:
        self.blobs[name] = (data, when)

    def list_blobs(self):
        return [SimpleNamespace(name=name, last_modified=when) for name, (_, when) in self.blobs.items()]

    def download_blob(self, name):
        self.downloads.append(name)
        return SimpleNamespace(readinto=lambda handle: handle.write(self.blobs[name][0]))


def jsonl(n: int, seed: int = 0) -> bytes:
    return "".join(json.dumps(chat) + "\n" for chat in make_conversations(n, seed=seed)).encode()


def event(subject: str = SUBJECT, event_type: str = "Microsoft.Storage.BlobCreated", event_id: str = "1") -> dict:
    """A BlobCreated event in the Event Grid schema, as the storage queue destination writes it."""
    name = subject.rsplit("/blobs/", 1)[-1]
    return {
        "id": event_id,
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sttest",
        "subject": subject,
        "eventType": event_type,
        "eventTime": "2026-12-01T21:00:00.0000000Z",
        "data": {"api": "PutBlob", "url": f"https://sttest.blob.core.windows.net/training-data/{name}"},
        "dataVersion": "",
        "metadataVersion": "1",
    }


def message(body: dict) -> bytes:
    return json.dumps(body).encode()


def lock_for(handler, transport: BlobLeaseTransport, sleep=time.sleep):
    from azure.storage.blob import BlobClient

    blob = BlobClient("https://stfntest.blob.core.windows.net", "retrain-lock", "retrain.lock", transport=transport)
    return handler.BlobLock(blob, sleep=sleep)


def test_function_app_binds_one_queue_trigger_on_the_queue_the_bicep_names(handler, monkeypatch):
    import azure.functions as func
    import function_app

    (function,) = function_app.app.get_functions()
    assert function.get_function_name() == "retrain_on_new_data"
    (binding,) = function.get_bindings()
    assert (binding.type, binding.name) == ("queueTrigger", "message")
    assert binding.get_dict_repr()["queueName"] == "%CHATFT_RETRAIN_QUEUE%"
    seen = []
    monkeypatch.setattr(function_app, "handle_message", lambda body: seen.append(body))
    function.get_user_function()(func.QueueMessage(id="m1", body=message(event())))
    assert [json.loads(body)["subject"] for body in seen] == [SUBJECT]


def test_host_takes_one_message_at_a_time_and_keeps_failures(handler):
    host = json.loads((FUNCTION / "host.json").read_text())
    assert host["version"] == "2.0" and host["functionTimeout"] == "00:30:00"
    queues = host["extensions"]["queues"]
    # batchSize 1 + newBatchThreshold 0: an instance holds one message; BlobLock covers the other instances.
    assert (queues["batchSize"], queues["newBatchThreshold"]) == (1, 0)
    assert queues["maxDequeueCount"] >= 3, "failed messages are retried, then kept on the poison queue"
    # Both waits of an invocation fit in its timeout, with the submission's minutes to spare.
    assert handler.LOCK_WAIT_SECONDS + handler.MAX_QUIET_WAIT_SECONDS <= 30 * 60 - 5 * 60


@pytest.mark.parametrize("encode", [lambda b: b, lambda b: base64.b64encode(b)], ids=["json", "base64"])
def test_messages_are_read_as_event_grid_writes_them(handler, encode):
    assert handler.parse_event(encode(message(event())))["subject"] == SUBJECT
    assert handler.parse_event(encode(message([event()])))["subject"] == SUBJECT
    with pytest.raises(ValueError, match="not an Event Grid event"):
        handler.parse_event(encode(b'{"hello": 1}'))
    with pytest.raises(ValueError, match="neither JSON nor base64"):
        handler.parse_event(b"not json at all!")


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("Microsoft.Storage.BlobDeleted", SUBJECT),
        ("Microsoft.Storage.BlobCreated", "/blobServices/default/containers/other/blobs/x.jsonl"),
    ],
)
def test_other_events_are_ignored_without_touching_storage_or_the_workspace(handler, event_type, subject):
    container, client, transport = FakeContainer({"a.jsonl": jsonl(3)}), FakeMLClient(), BlobLeaseTransport()
    body = message(event(subject, event_type))
    assert handler.handle_message(body, client=container, lock=lock_for(handler, transport), ml_client=client) == 0
    assert container.downloads == [] and client.calls == [] and transport.requests == []


def test_new_blob_registers_the_containers_data_and_submits_once(handler):
    blobs = {"a.jsonl": jsonl(10), "2026/11/b.jsonl": jsonl(4, seed=3), "README.txt": b"not data"}
    container, client, transport = FakeContainer(blobs), FakeMLClient(), BlobLeaseTransport()
    lock = lock_for(handler, transport)
    assert handler.handle_message(message(event()), client=container, lock=lock, ml_client=client) == 0
    assert sorted(container.downloads) == ["2026/11/b.jsonl", "a.jsonl"]
    (uploaded,) = client.uploads.values()
    assert uploaded == ["2026/11/b.jsonl", "a.jsonl"]
    assert client.sequence()[-1] == "jobs.create_or_update", "submitted without streaming: the function returns"
    (job,) = client.submitted
    assert job.inputs.raw_data.path.startswith("azureml:chatft-chat-data:")
    # Decided under the lease, and the lease was given back.
    assert [action for _, _, action in transport.requests] == [None, "acquire", "release"]
    assert transport.leases == {}


def test_a_redelivered_event_during_the_first_submission_gives_exactly_one_run(handler):
    """The race of the old design: the second delivery arrives while the first is still submitting. The second
    worker waits for the lock, then finds the fingerprint registered and does nothing."""
    container, client, transport = FakeContainer({"a.jsonl": jsonl(8)}), FakeMLClient(), BlobLeaseTransport()
    second_arrived = threading.Event()

    def first_worker_pauses(get):  # the first submission stops mid-way until the redelivery has come in
        def paused(*args, **kwargs):
            if threading.current_thread().name == "first":
                second_arrived.wait(timeout=10)
            return get(*args, **kwargs)

        return paused

    client.environments.get = first_worker_pauses(client.environments.get)
    data_get = client.data.get

    def data_get_noting_the_second(*args, **kwargs):
        if threading.current_thread().name == "second":
            second_arrived.set()
        return data_get(*args, **kwargs)

    client.data.get = data_get_noting_the_second

    def waiting_for_the_lock(seconds):  # the second worker's sleep between lease attempts
        second_arrived.set()
        time.sleep(0.01)

    results: dict[str, object] = {}

    def deliver(name: str, sleep) -> None:
        try:
            lock = lock_for(handler, transport, sleep=sleep)
            results[name] = handler.handle_message(message(event()), client=container, lock=lock, ml_client=client)
        except Exception as err:  # reported below; a thread's exception would otherwise vanish
            results[name] = err

    first = threading.Thread(target=deliver, args=("first", time.sleep), name="first")
    first.start()
    while not any(name == "environments.get" for name, _ in client.calls):  # the first is submitting now
        time.sleep(0.01)
    second = threading.Thread(target=deliver, args=("second", waiting_for_the_lock), name="second")
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)

    assert results == {"first": 0, "second": 0}
    assert len(client.submitted) == 1, "the redelivery must not start a second run"
    assert [c for c in client.creations() if c.startswith("data.")] == [
        f"data.create_or_update(chatft-chat-data:{client.submitted[0].inputs.raw_data.path.rsplit(':', 1)[1]})"
    ]
    assert ("PUT", "/retrain-lock/retrain.lock", "acquire") in transport.requests[2:], "the second waited its turn"
    assert transport.leases == {}


def test_a_five_file_upload_gives_exactly_one_run_on_all_five_files(handler, monkeypatch):
    """Five files land 10 s apart, each with its event; the first message waits for the upload to go quiet,
    then trains on all five. The other four messages find that fingerprint registered."""
    monkeypatch.setenv("CHATFT_QUIET_SECONDS", "60")
    upload = [(f"batch/part-{i}.jsonl", jsonl(4, seed=10 + i), T0 + timedelta(seconds=10 * i)) for i in range(5)]
    container, client, transport = FakeContainer(), FakeMLClient(), BlobLeaseTransport()
    clock = {"now": T0}
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # simulated time: the upload goes on while a worker waits
        slept.append(seconds)
        clock["now"] += timedelta(seconds=seconds)
        for name, data, when in upload:
            if when <= clock["now"]:
                container.put(name, data, when)

    container.put(*upload[0])
    messages = [
        message(event(f"/blobServices/default/containers/training-data/blobs/{n}", event_id=n)) for n, *_ in upload
    ]
    for body in messages:
        lock = lock_for(handler, transport, sleep=sleep)
        assert (
            handler.handle_message(
                body, client=container, lock=lock, ml_client=client, sleep=sleep, now=lambda: clock["now"]
            )
            == 0
        )

    assert len(client.submitted) == 1
    (uploaded,) = client.uploads.values()
    assert uploaded == [f"batch/part-{i}.jsonl" for i in range(5)], "the one run trains on every file"
    # Quiet 60 s after the last file (t=40 s): the first worker waited 60 s, then 40 s more; the others not at all.
    assert slept == [60.0, 40.0]
    assert client.sequence().count("data.get") == 1 + 1 + 4, "retrain's decision and ensure_data_asset, then 4 x"


def test_an_upload_that_never_goes_quiet_is_retried_later(handler, monkeypatch):
    monkeypatch.setenv("CHATFT_QUIET_SECONDS", "60")
    container, client = FakeContainer(), FakeMLClient()
    clock = {"now": T0}

    def sleep(seconds):  # a file lands every 30 s, for ever
        clock["now"] += timedelta(seconds=seconds)
        container.put(f"f{clock['now'].timestamp()}.jsonl", jsonl(2), clock["now"] - timedelta(seconds=1))

    container.put("f0.jsonl", jsonl(2), T0)
    lock = lock_for(handler, BlobLeaseTransport())
    with pytest.raises(handler.RetrainFailed, match="still being written"):
        handler.handle_message(
            message(event()), client=container, lock=lock, ml_client=client, sleep=sleep, now=lambda: clock["now"]
        )
    assert client.calls == []


def test_a_lock_held_too_long_fails_the_message_so_the_queue_retries_it(handler):
    transport = BlobLeaseTransport()
    holder = lock_for(handler, transport).__enter__()
    ticks = iter(range(0, 10_000, 5))
    from azure.storage.blob import BlobClient

    blob = BlobClient("https://stfntest.blob.core.windows.net", "retrain-lock", "retrain.lock", transport=transport)
    waiting = handler.BlobLock(blob, wait_seconds=30, sleep=lambda s: None, clock=lambda: next(ticks))
    container, client = FakeContainer({"a.jsonl": jsonl(3)}), FakeMLClient()
    with pytest.raises(handler.LockBusy, match="held for over 30 s"):
        handler.handle_message(message(event()), client=container, lock=waiting, ml_client=client)
    assert client.calls == [] and container.downloads == []
    holder.__exit__(None, None, None)
    assert transport.leases == {}


def test_a_failed_retrain_raises_so_the_queue_retries(handler):
    container = FakeContainer({"a.jsonl": jsonl(5)})
    client = FakeMLClient(quota=AMPLE_QUOTA | {"standardNCADSA100v4Family": (0, 0)})
    lock = lock_for(handler, BlobLeaseTransport())
    with pytest.raises(handler.RetrainFailed, match="retrain exited with 3"):
        handler.handle_message(message(event()), client=container, lock=lock, ml_client=client)


def test_download_keeps_paths_and_skips_other_files(handler, tmp_path):
    container = FakeContainer({"x/y.jsonl": b'{"a": 1}\n', "notes.md": b"#"})
    assert handler.download_jsonl(container, tmp_path) == 1
    assert (tmp_path / "x" / "y.jsonl").read_bytes() == b'{"a": 1}\n'
    assert not (tmp_path / "notes.md").exists()


def _pins(text: str) -> dict[str, str]:
    return {
        re.sub(r"[-_.]+", "-", m.group(1)).lower(): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", text, re.MULTILINE)
    }


def test_function_requirements_are_pinned_like_the_project():
    wanted = _pins((FUNCTION / "requirements.txt").read_text())
    locked = _pins((ROOT / "constraints.txt").read_text())
    assert {"azure-functions", "azure-ai-ml", "azure-identity", "azure-storage-blob", "pyyaml"} <= set(wanted)
    assert {name: version for name, version in wanted.items() if locked.get(name) != version} == {}


@pytest.mark.slow
def test_package_ships_what_the_handler_imports_and_versions_components_like_a_laptop(tmp_path):
    target = tmp_path / "package"
    result = subprocess.run(
        ["bash", str(FUNCTION / "package.sh"), str(target)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for path in ("function_app.py", "host.json", "requirements.txt", "pipelines/retrain.py", "src/chatft/jsonl_io.py"):
        assert (target / path).is_file(), path
    assert not list(target.rglob("__pycache__"))
    # Import the staged copy alone (no repository on the path) and compare its component versions with ours.
    probe = (
        "import json, function_app\n"
        "from pipelines.settings import PROJECT_ROOT, load_settings\n"
        "from pipelines.azure_backend import plan_submission\n"
        "plan = plan_submission(load_settings(PROJECT_ROOT / 'pipelines/config/azure.yaml'))\n"
        "print(json.dumps({'root': str(PROJECT_ROOT), 'versions': [c.version for c in plan.components]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {"CHATFT_TRAINING_CONTAINER": "t"}
    staged = subprocess.run(
        [sys.executable, "-c", probe], cwd=target, capture_output=True, text=True, timeout=300, env=env
    )
    assert staged.returncode == 0, staged.stderr[-2000:]
    shipped = json.loads(staged.stdout.strip().splitlines()[-1])
    assert shipped["root"] == str(target)
    ours = azure_backend.plan_submission(load_settings(ROOT / "pipelines/config/azure.yaml"))
    assert shipped["versions"] == [c.version for c in ours.components]
