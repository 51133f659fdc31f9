"""The retraining function (infra/retrain_function/), offline: its queue binding, its handler against a fake blob
container, a real BlobClient lock over a fake Blob transport and a real MLClient over the simulation of the Azure ML
REST API (tests/helpers/azure_transport.py), its pins, and the package that ships it with the project code.

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

from pipelines.azure import plan as azure_plan
from pipelines.settings import load_settings
from tests.helpers.azure_transport import AzureRestSimulation, fixture
from tests.helpers.blob_lease_transport import BlobLeaseTransport
from tests.helpers.chat_data import make_conversations

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


def uploaded_data(sim) -> list[str]:
    """The files the SDK uploaded for the data asset (the handler's download folder is named data/)."""
    return sorted(name.split("/data/", 1)[1] for name in sim.blobs if "/LocalUpload/" in name and "/data/" in name)


def runs(sim) -> int:
    return len(sim.sent("PUT", r"^\{ws\}/jobs/"))


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
def test_other_events_are_ignored_without_touching_storage_or_the_workspace(handler, azure_sim, event_type, subject):
    container, transport = FakeContainer({"a.jsonl": jsonl(3)}), BlobLeaseTransport()
    body = message(event(subject, event_type))
    lock = lock_for(handler, transport)
    assert handler.handle_message(body, client=container, lock=lock, ml_client=azure_sim.client()) == 0
    assert container.downloads == [] and azure_sim.requests == [] and transport.requests == []


def test_new_blob_registers_the_containers_data_and_submits_once(handler, azure_sim):
    blobs = {"a.jsonl": jsonl(10), "2026/11/b.jsonl": jsonl(4, seed=3), "README.txt": b"not data"}
    container, transport = FakeContainer(blobs), BlobLeaseTransport()
    lock = lock_for(handler, transport)
    assert handler.handle_message(message(event()), client=container, lock=lock, ml_client=azure_sim.client()) == 0
    assert sorted(container.downloads) == ["2026/11/b.jsonl", "a.jsonl"]
    assert uploaded_data(azure_sim) == ["2026/11/b.jsonl", "a.jsonl"]
    (job,) = azure_sim.sent("PUT", r"/jobs/")
    assert azure_sim.requests[-1] is job, "submitted without following the run: the function returns"
    assert "/data/chatft-chat-data/versions/" in job.body["properties"]["inputs"]["raw_data"]["uri"]
    # Decided under the lease, and the lease was given back.
    assert [action for _, _, action in transport.requests] == [None, "acquire", "release"]
    assert transport.leases == {}


def test_a_redelivered_event_during_the_first_submission_gives_exactly_one_run(handler, azure_sim):
    """The race of the old design: the second delivery arrives while the first is still submitting. The second
    worker waits for the lock, then finds the fingerprint registered and does nothing. Each worker has its own
    MLClient, as two function instances would; the workspace (the simulation) is shared."""
    container, transport = FakeContainer({"a.jsonl": jsonl(8)}), BlobLeaseTransport()
    second_arrived, first_submitting = threading.Event(), threading.Event()
    answer = azure_sim._answer  # the simulation's entry point, wrapped to hold the first submission mid-way

    def answer_pausing_the_first(prepared):
        if threading.current_thread().name == "first" and "/environments/" in prepared.url:
            first_submitting.set()
            second_arrived.wait(timeout=10)
        if threading.current_thread().name == "second" and "/data/" in prepared.url:
            second_arrived.set()  # (the old code: the second worker asks for the version while the first submits)
        return answer(prepared)

    azure_sim._answer = answer_pausing_the_first

    def waiting_for_the_lock(seconds):  # the second worker's sleep between lease attempts
        second_arrived.set()
        time.sleep(0.01)

    results: dict[str, object] = {}

    def deliver(name: str, sleep) -> None:
        try:
            lock = lock_for(handler, transport, sleep=sleep)
            body = message(event())
            results[name] = handler.handle_message(body, client=container, lock=lock, ml_client=azure_sim.client())
        except Exception as err:  # reported below; a thread's exception would otherwise vanish
            results[name] = err

    first = threading.Thread(target=deliver, args=("first", time.sleep), name="first")
    first.start()
    assert first_submitting.wait(timeout=60), "the first worker never reached its submission"
    second = threading.Thread(target=deliver, args=("second", waiting_for_the_lock), name="second")
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)

    assert results == {"first": 0, "second": 0}
    assert runs(azure_sim) == 1, "the redelivery must not start a second run"
    assert len(azure_sim.sent("PUT", r"^\{ws\}/data/")) == 1
    assert ("PUT", "/retrain-lock/retrain.lock", "acquire") in transport.requests[2:], "the second waited its turn"
    assert transport.leases == {}


def test_a_five_file_upload_gives_exactly_one_run_on_all_five_files(handler, azure_sim, monkeypatch):
    """Five files land 10 s apart, each with its event; the first message waits for the upload to go quiet,
    then trains on all five. The other four messages find that fingerprint registered."""
    monkeypatch.setenv("CHATFT_QUIET_SECONDS", "60")
    upload = [(f"batch/part-{i}.jsonl", jsonl(4, seed=10 + i), T0 + timedelta(seconds=10 * i)) for i in range(5)]
    container, transport, client = FakeContainer(), BlobLeaseTransport(), azure_sim.client()
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

    assert runs(azure_sim) == 1
    assert uploaded_data(azure_sim) == [f"batch/part-{i}.jsonl" for i in range(5)], "the one run trains on every file"
    # Quiet 60 s after the last file (t=40 s): the first worker waited 60 s, then 40 s more; the others not at all.
    assert slept == [60.0, 40.0]
    data_reads = [r.status for r in azure_sim.sent("GET", r"/data/chatft-chat-data/versions/")]
    assert data_reads == [404, 404, 200, 200, 200, 200], "retrain's decision and ensure_data_asset, then 4 x found"


def test_an_upload_that_never_goes_quiet_is_retried_later(handler, azure_sim, monkeypatch):
    monkeypatch.setenv("CHATFT_QUIET_SECONDS", "60")
    container, client = FakeContainer(), azure_sim.client()
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
    assert azure_sim.requests == []


def test_a_lock_held_too_long_fails_the_message_so_the_queue_retries_it(handler, azure_sim):
    transport = BlobLeaseTransport()
    holder = lock_for(handler, transport).__enter__()
    ticks = iter(range(0, 10_000, 5))
    from azure.storage.blob import BlobClient

    blob = BlobClient("https://stfntest.blob.core.windows.net", "retrain-lock", "retrain.lock", transport=transport)
    waiting = handler.BlobLock(blob, wait_seconds=30, sleep=lambda s: None, clock=lambda: next(ticks))
    container = FakeContainer({"a.jsonl": jsonl(3)})
    with pytest.raises(handler.LockBusy, match="held for over 30 s"):
        handler.handle_message(message(event()), client=container, lock=waiting, ml_client=azure_sim.client())
    assert azure_sim.requests == [] and container.downloads == []
    holder.__exit__(None, None, None)
    assert transport.leases == {}


def test_a_failed_retrain_raises_so_the_queue_retries(handler, monkeypatch):
    # A region with no A100 quota: preflight refuses (exit 3) before anything is created.
    usages = fixture("usages.json")["value"]
    for usage in usages:
        if "NCADSA100v4" in usage["name"]["value"] and usage["type"].endswith("/vmFamily/usages"):
            usage["limit"] = 0
    sim = AzureRestSimulation(usages=usages)
    sim.route_storage(monkeypatch)
    container = FakeContainer({"a.jsonl": jsonl(5)})
    lock = lock_for(handler, BlobLeaseTransport())
    with pytest.raises(handler.RetrainFailed, match="retrain exited with 3"):
        handler.handle_message(message(event()), client=container, lock=lock, ml_client=sim.client())
    assert not sim.sent("PUT", r"^\{ws\}/(data|jobs)/") and not sim.unexpected


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
        "from pipelines.azure.plan import plan_submission\n"
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
    ours = azure_plan.plan_submission(load_settings(ROOT / "pipelines/config/azure.yaml"))
    assert shipped["versions"] == [c.version for c in ours.components]
