"""Retraining on new data: the Azure decision (against the recording fake MLClient) and the local backend's reuse."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines import azure_backend, retrain
from pipelines.local_backend import LocalBackend
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.fake_azure import FakeMLClient, http_error


def run(args: list[str], client=None, tmp_path: Path | None = None) -> int:
    extra = ["--output-root", str(tmp_path)] if tmp_path else []
    return retrain.main(retrain.parse_args(args + extra), ml_client=client)


@pytest.fixture
def chats(tmp_path) -> Path:
    write_jsonl(tmp_path / "chats" / "a.jsonl", make_conversations(12))
    return tmp_path / "chats"


def test_unchanged_data_does_nothing(chats, tmp_path, capsys):
    fingerprint, _ = azure_backend.data_fingerprint(chats)
    client = FakeMLClient()
    client.data.add("chatft-chat-data", fingerprint[: azure_backend.VERSION_DIGITS])
    assert run(["--data", str(chats)], client, tmp_path) == 0
    assert client.sequence() == ["data.get"]
    out = capsys.readouterr().out
    assert "Data unchanged" in out and "nothing to do" in out


def test_new_data_registers_its_version_and_submits(chats, tmp_path):
    old, _ = azure_backend.data_fingerprint(chats)
    client = FakeMLClient()
    client.data.add("chatft-chat-data", old[: azure_backend.VERSION_DIGITS])
    write_jsonl(chats / "new.jsonl", make_conversations(3, seed=7))
    new, _ = azure_backend.data_fingerprint(chats)

    assert run(["--data", str(chats), "--no-stream"], client, tmp_path) == 0
    version = new[: azure_backend.VERSION_DIGITS]
    assert f"data.create_or_update(chatft-chat-data:{version})" in client.creations()
    assert client.sequence()[-1] == "jobs.create_or_update"
    (job,) = client.submitted
    assert job.inputs.raw_data.path == f"azureml:chatft-chat-data:{version}"


def test_force_submits_unchanged_data_without_registering_it_again(chats, tmp_path):
    fingerprint, _ = azure_backend.data_fingerprint(chats)
    client = FakeMLClient()
    client.data.add("chatft-chat-data", fingerprint[: azure_backend.VERSION_DIGITS])
    assert run(["--data", str(chats), "--force", "--no-stream"], client, tmp_path) == 0
    assert not [c for c in client.creations() if c.startswith("data.")]
    assert "jobs.create_or_update" in client.sequence()


def _loses_the_race(client: FakeMLClient, fingerprint: str) -> None:
    """Another run registers the version between our lookup and our create; the service then refuses ours."""

    def create_after_another_run(asset, version=None, **kwargs):
        client.data.add(asset.name, asset.version, tags={azure_backend.FINGERPRINT_TAG: fingerprint})
        client.record("data.create_or_update", f"{asset.name}:{asset.version}")
        raise http_error(409, f"Conflict: version {asset.version} of {asset.name} already exists")

    client.data.create_or_update = create_after_another_run


def test_a_version_registered_meanwhile_with_the_same_data_is_tolerated(chats, tmp_path, capsys):
    fingerprint, _ = azure_backend.data_fingerprint(chats)
    client = FakeMLClient()
    _loses_the_race(client, fingerprint)
    assert run(["--data", str(chats), "--no-stream"], client, tmp_path) == 0
    assert client.sequence()[-1] == "jobs.create_or_update", "the pipeline is still submitted"
    assert "registered meanwhile by another run" in capsys.readouterr().out


def test_a_version_taken_by_other_data_is_a_clear_error(chats, tmp_path, capsys):
    client = FakeMLClient()
    _loses_the_race(client, "f" * 64)
    assert run(["--data", str(chats), "--no-stream"], client, tmp_path) == azure_backend.EXIT_INVALID
    assert "jobs.create_or_update" not in client.sequence()
    err = capsys.readouterr().err
    assert "already exists with data fingerprint ffff" in err and "data_asset_name" in err


def test_dry_run_prints_the_decision_input_offline(chats, capsys):
    client = FakeMLClient()
    assert run(["--data", str(chats), "--dry-run"], client) == 0
    assert client.calls == []
    fingerprint, _ = azure_backend.data_fingerprint(chats)
    assert f"chatft-chat-data:{fingerprint[: azure_backend.VERSION_DIGITS]}" in capsys.readouterr().out


def test_a_hugging_face_preset_has_no_local_data_to_decide_on(capsys):
    client = FakeMLClient()
    assert run([], client) == azure_backend.EXIT_INVALID
    assert client.calls == []
    assert "pass --data PATH" in capsys.readouterr().err


# ---- locally: make run already retrains on new data ------------------------------------------------------------
SCHEMA = "$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
COMPONENTS = {
    # Stands in for prep_data: reads every .jsonl under the data folder.
    "prep": (
        "inputs:\n  raw: {type: uri_folder}\noutputs:\n  prepared: {type: uri_folder}\n",
        "python step.py --raw ${{inputs.raw}} --out ${{outputs.prepared}}",
        "import pathlib, sys\nraw, out = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[4])\n"
        "lines = [l for f in sorted(raw.rglob('*.jsonl')) for l in f.read_text().splitlines()]\n"
        "(out / 'all.jsonl').write_text('\\n'.join(lines))\n",
    ),
    # Stands in for finetune: depends on prep's output only.
    "train": (
        "inputs:\n  prepared: {type: uri_folder}\noutputs:\n  model: {type: uri_folder}\n",
        "python step.py --prepared ${{inputs.prepared}} --out ${{outputs.model}}",
        "import pathlib, sys\nsrc, out = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[4])\n"
        "(out / 'model.txt').write_text(str(len((src / 'all.jsonl').read_text().splitlines())))\n",
    ),
    # A step that does not depend on the data (like a base-model check): new data must not rerun it.
    "baseline": (
        "inputs:\n  label: {type: string}\noutputs:\n  note: {type: uri_folder}\n",
        "python step.py --label ${{inputs.label}} --out ${{outputs.note}}",
        "import pathlib, sys\n(pathlib.Path(sys.argv[4]) / 'note.txt').write_text(sys.argv[2])\n",
    ),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for name, (io, command, script) in COMPONENTS.items():
        folder = root / "components" / name
        folder.mkdir(parents=True)
        spec = f"{SCHEMA}\nname: {name}\nversion: 1\ntype: command\ncode: .\nenvironment: azureml:chatft-cpu:1\n"
        (folder / "component.yml").write_text(spec + io + f"command: >-\n  {command}\n")
        (folder / "step.py").write_text(textwrap.dedent(script))
    write_jsonl(root / "data" / "first.jsonl", make_conversations(4))
    return root


def build(root: Path):
    from azure.ai.ml import Input, dsl, load_component

    prep, train, baseline = (load_component(source=root / f"components/{n}/component.yml") for n in COMPONENTS)

    @dsl.pipeline(name="retrain_local", default_compute="cpu")
    def pipeline(raw):
        prepared = prep(raw=raw)
        model = train(prepared=prepared.outputs.prepared)
        note = baseline(label="base")
        return {"model": model.outputs.model, "note": note.outputs.note}

    return pipeline(raw=Input(type="uri_folder", path=str(root / "data")))


def test_local_backend_reruns_from_prep_onward_on_new_data_and_reuses_the_rest(project, mlflow_store):
    def run_local():
        backend = LocalBackend(project / "outputs", project, stream_logs=False, tracking_uri=mlflow_store.uri)
        result = backend.run(build(project), "retrain-local")
        return {step.name: step.status for step in result.steps}, result

    first, _ = run_local()
    assert set(first.values()) == {"completed"}
    unchanged, _ = run_local()
    assert unchanged == {"prepared": "reused", "model": "reused", "note": "reused"}

    write_jsonl(project / "data" / "second.jsonl", make_conversations(3, seed=5))
    changed, result = run_local()
    assert changed == {"prepared": "completed", "model": "completed", "note": "reused"}
    assert (result.outputs["model"] / "model.txt").read_text() == "7"
