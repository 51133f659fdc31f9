"""The retraining function (infra/retrain_function/), offline: its Event Grid binding, its handler against a fake
blob container and the recording fake MLClient, its pins, and the package that ships it with the project code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines import azure_backend
from pipelines.settings import load_settings
from tests.helpers.chat_data import make_conversations
from tests.helpers.fake_azure import AMPLE_QUOTA, FakeMLClient

ROOT = Path(__file__).resolve().parents[2]
FUNCTION = ROOT / "infra" / "retrain_function"
SUBJECT = "/blobServices/default/containers/training-data/blobs/chats-2026-11.jsonl"


@pytest.fixture
def handler(monkeypatch):
    monkeypatch.syspath_prepend(str(FUNCTION))
    monkeypatch.setenv("CHATFT_TRAINING_CONTAINER", "training-data")
    monkeypatch.setenv("CHATFT_TRAINING_ACCOUNT_URL", "https://sttest.blob.core.windows.net/")
    import retrain_handler

    return retrain_handler


class FakeContainer:
    """Stands in for azure.storage.blob.ContainerClient: list_blobs and download_blob(...).readinto only."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs, self.downloads = blobs, []

    def list_blobs(self):
        return [SimpleNamespace(name=name) for name in self.blobs]

    def download_blob(self, name):
        self.downloads.append(name)
        return SimpleNamespace(readinto=lambda handle: handle.write(self.blobs[name]))


def jsonl(n: int, seed: int = 0) -> bytes:
    return "".join(json.dumps(chat) + "\n" for chat in make_conversations(n, seed=seed)).encode()


def test_function_app_binds_one_event_grid_trigger_named_like_the_bicep_destination(handler, monkeypatch):
    import azure.functions as func
    import function_app

    (function,) = function_app.app.get_functions()
    assert function.get_function_name() == "retrain_on_new_data"
    assert [(b.type, b.name) for b in function.get_bindings()] == [("eventGridTrigger", "event")]
    seen = []
    monkeypatch.setattr(function_app, "handle_event", lambda *args: seen.append(args))
    event = func.EventGridEvent(
        id="1",
        data={"api": "PutBlob", "url": "https://sttest.blob.core.windows.net/training-data/chats-2026-11.jsonl"},
        topic="/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sttest",
        subject=SUBJECT,
        event_type="Microsoft.Storage.BlobCreated",
        event_time=None,
        data_version="",
    )
    function.get_user_function()(event)
    assert seen == [("Microsoft.Storage.BlobCreated", SUBJECT)]


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("Microsoft.Storage.BlobDeleted", SUBJECT),
        ("Microsoft.Storage.BlobCreated", "/blobServices/default/containers/other/blobs/x.jsonl"),
    ],
)
def test_other_events_are_ignored_without_touching_storage_or_the_workspace(handler, event_type, subject):
    container, client = FakeContainer({"a.jsonl": jsonl(3)}), FakeMLClient()
    assert handler.handle_event(event_type, subject, client=container, ml_client=client) == 0
    assert container.downloads == [] and client.calls == []


def test_new_blob_registers_the_containers_data_and_submits_once(handler):
    blobs = {"a.jsonl": jsonl(10), "2026/11/b.jsonl": jsonl(4, seed=3), "README.txt": b"not data"}
    container, client = FakeContainer(blobs), FakeMLClient()
    assert handler.handle_event("Microsoft.Storage.BlobCreated", SUBJECT, client=container, ml_client=client) == 0
    assert sorted(container.downloads) == ["2026/11/b.jsonl", "a.jsonl"]
    (uploaded,) = client.uploads.values()
    assert uploaded == ["2026/11/b.jsonl", "a.jsonl"]
    assert client.sequence()[-1] == "jobs.create_or_update", "submitted without streaming: the function returns"
    (job,) = client.submitted
    assert job.inputs.raw_data.path.startswith("azureml:chatft-chat-data:")

    # The same blobs again (a second event of the same upload): the version exists, nothing is submitted.
    client.calls.clear()
    assert handler.handle_event("Microsoft.Storage.BlobCreated", SUBJECT, client=container, ml_client=client) == 0
    assert client.sequence() == ["data.get"]


def test_a_failed_retrain_raises_so_event_grid_retries(handler):
    container = FakeContainer({"a.jsonl": jsonl(5)})
    client = FakeMLClient(quota=AMPLE_QUOTA | {"standardNCADSA100v4Family": (0, 0)})
    with pytest.raises(handler.RetrainFailed, match="retrain exited with 3"):
        handler.handle_event("Microsoft.Storage.BlobCreated", SUBJECT, client=container, ml_client=client)


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


def test_host_json_gives_the_submission_time_to_finish():
    host = json.loads((FUNCTION / "host.json").read_text())
    assert host["version"] == "2.0" and host["functionTimeout"] == "00:30:00"


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
