"""Retraining on new data: the Azure decision, against the simulation of the Azure ML REST API (a real MLClient over
tests/helpers/azure_transport.py: a simulation, not Azure), and the local backend's reuse."""

from __future__ import annotations

import re
import textwrap
import urllib.parse
from pathlib import Path

import pytest

from pipelines import retrain
from pipelines.azure import cli, plan
from pipelines.local_backend import LocalBackend
from tests.helpers.azure_transport import AzureRestSimulation, Recorded, Reply, arm_error
from tests.helpers.chat_data import make_conversations, write_jsonl


def run(args: list[str], sim=None, tmp_path: Path | None = None) -> int:
    extra = ["--output-root", str(tmp_path)] if tmp_path else []
    return retrain.main(retrain.parse_args(args + extra), ml_client=sim.client() if sim else None)


def data_puts(sim) -> list[str]:
    return [r.path.split("/data/", 1)[1] for r in sim.sent("PUT", r"^\{ws\}/data/")]


def version_of(folder: Path) -> str:
    return plan.data_fingerprint(folder)[0][: plan.VERSION_DIGITS]


@pytest.fixture
def chats(tmp_path) -> Path:
    write_jsonl(tmp_path / "chats" / "a.jsonl", make_conversations(12))
    return tmp_path / "chats"


def test_unchanged_data_does_nothing(azure_sim, chats, tmp_path, capsys):
    assert run(["--data", str(chats), "--no-stream"], azure_sim, tmp_path) == 0  # a first retrain registers it
    azure_sim.requests.clear()
    assert run(["--data", str(chats)], azure_sim, tmp_path) == 0
    assert azure_sim.sequence() == [f"GET {{ws}}/data/chatft-chat-data/versions/{version_of(chats)}"]
    out = capsys.readouterr().out
    assert "Data unchanged" in out and "nothing to do" in out


def test_new_data_registers_its_version_and_submits(azure_sim, chats, tmp_path):
    assert run(["--data", str(chats), "--no-stream"], azure_sim, tmp_path) == 0
    old = version_of(chats)
    write_jsonl(chats / "new.jsonl", make_conversations(3, seed=7))
    new = version_of(chats)

    assert run(["--data", str(chats), "--no-stream"], azure_sim, tmp_path) == 0
    assert data_puts(azure_sim) == [f"chatft-chat-data/versions/{old}", f"chatft-chat-data/versions/{new}"]
    last_job = azure_sim.sent("PUT", r"/jobs/")[-1]
    assert azure_sim.requests[-1] is last_job, "submitted last, without following the run"
    raw_data = last_job.body["properties"]["inputs"]["raw_data"]
    assert raw_data["uri"].endswith(f"/data/chatft-chat-data/versions/{new}")


def test_force_submits_unchanged_data_without_registering_it_again(azure_sim, chats, tmp_path):
    assert run(["--data", str(chats), "--no-stream"], azure_sim, tmp_path) == 0
    azure_sim.requests.clear()
    assert run(["--data", str(chats), "--force", "--no-stream"], azure_sim, tmp_path) == 0
    assert data_puts(azure_sim) == []
    assert len(azure_sim.sent("PUT", r"/jobs/")) == 1


class LosesTheDataRace(AzureRestSimulation):
    """Another run registers the data version between our lookup (404) and our PUT, which the service then refuses.

    The refusal's shape is an assumption (no published example covers a version PUT that races another): ARM's error
    body with 409 Conflict. What the code relies on is only that the SDK raises and the version then exists.
    """

    def __init__(self, their_fingerprint: str | None = None):
        super().__init__()
        self.their_fingerprint = their_fingerprint  # None: the other run registered the same data

    def _put(self, record: Recorded, match: re.Match) -> Reply:
        if match["kind"] != "data" or self.get("data", match["name"], match["v"]) is not None:
            return super()._put(record, match)
        theirs = {**record.body, "properties": {**record.body["properties"]}}
        if self.their_fingerprint:
            tags = {**theirs["properties"]["tags"], plan.FINGERPRINT_TAG: self.their_fingerprint}
            theirs["properties"]["tags"] = tags
        self._store(urllib.parse.urlsplit(record.url).path, "data", theirs)
        return arm_error(409, "UserError", f"Conflict: version {match['v']} of data {match['name']} already exists.")


@pytest.fixture
def racing(monkeypatch, request):
    sim = LosesTheDataRace(getattr(request, "param", None))
    sim.route_storage(monkeypatch)
    yield sim
    assert not sim.unexpected, [str(r) for r in sim.unexpected]


def test_a_version_registered_meanwhile_with_the_same_data_is_tolerated(racing, chats, tmp_path, capsys):
    assert run(["--data", str(chats), "--no-stream"], racing, tmp_path) == 0
    assert [r.status for r in racing.sent("PUT", r"/data/")] == [409]
    assert len(racing.sent("PUT", r"/jobs/")) == 1, "the pipeline is still submitted, once"
    assert "registered meanwhile by another run" in capsys.readouterr().out


@pytest.mark.parametrize("racing", ["f" * 64], indirect=True)
def test_a_version_taken_by_other_data_is_a_clear_error(racing, chats, tmp_path, capsys):
    assert run(["--data", str(chats), "--no-stream"], racing, tmp_path) == cli.EXIT_INVALID
    assert not racing.sent("PUT", r"/jobs/")
    err = capsys.readouterr().err
    assert "already exists with data fingerprint ffff" in err and "data_asset_name" in err


def test_dry_run_prints_the_decision_input_offline(azure_sim, chats, capsys):
    assert run(["--data", str(chats), "--dry-run"], azure_sim) == 0
    assert azure_sim.requests == []
    assert f"chatft-chat-data:{version_of(chats)}" in capsys.readouterr().out


def test_a_hugging_face_preset_has_no_local_data_to_decide_on(azure_sim, capsys):
    assert run([], azure_sim) == cli.EXIT_INVALID
    assert azure_sim.requests == []
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
