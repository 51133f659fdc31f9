"""The local backend on a throwaway two-step project: resolution, reuse, failure, resume, boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.local_backend import LocalBackend, LocalRunError, hash_path, resolve_command
from tests.helpers.local_projects import component_yml, write_project

# Step 1: copies its input file's text plus a parameter; imports a helper through additional_includes.
MAKE_TEXT_YML = component_yml(
    "make_text",
    """
    additional_includes: [../../shared/helpers]
    inputs:
      source: {type: uri_folder}
      suffix: {type: string, default: "!"}
      repeat: {type: integer, default: 1, min: 1, max: 5}
      label: {type: string, optional: true}
    outputs:
      text: {type: uri_folder}
    command: >-
      python make_text.py --source ${{inputs.source}} --suffix ${{inputs.suffix}} --repeat ${{inputs.repeat}}
      $[[--label ${{inputs.label}}]] --text ${{outputs.text}}
    """,
)
MAKE_TEXT_PY = """
import argparse, os, pathlib
import helpers.shout
from helpers.shout import shout
parser = argparse.ArgumentParser()
for flag in ("--source", "--suffix", "--label", "--text"):
    parser.add_argument(flag)
parser.add_argument("--repeat", type=int)
args = parser.parse_args()
body = (pathlib.Path(args.source) / "in.txt").read_text()
label = args.label or "nolabel"
pathlib.Path(args.text, "out.txt").write_text(shout(body) * args.repeat + args.suffix + label)
print("PYTHONPATH:", os.environ.get("PYTHONPATH"))
print("helpers from:", pathlib.Path(helpers.shout.__file__).resolve())
"""
# Step 2: not deterministic (like a deployment), fails on its first attempt when asked to, keeping a counter in
# its output folder so a re-run can see what the interrupted attempt left.
PUBLISH_YML = component_yml(
    "publish",
    """
    is_deterministic: false
    inputs:
      text: {type: uri_folder}
      fail_first_attempt: {type: boolean, default: false}
    outputs:
      receipt: {type: uri_folder}
    command: python publish.py --text ${{inputs.text}} --fail_first_attempt ${{inputs.fail_first_attempt}}
      --receipt ${{outputs.receipt}}
    """,
)
PUBLISH_PY = """
import argparse, pathlib, sys
parser = argparse.ArgumentParser()
for flag in ("--text", "--fail_first_attempt", "--receipt"):
    parser.add_argument(flag)
args = parser.parse_args()
counter = pathlib.Path(args.receipt, "attempts")
attempts = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(attempts))
if args.fail_first_attempt == "True" and attempts == 1:
    sys.exit("simulated pre-emption on attempt 1")
text = (pathlib.Path(args.text) / "out.txt").read_text()
pathlib.Path(args.receipt, "receipt.txt").write_text(f"published {text} after {attempts} attempt(s)")
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    files = {
        "components/make_text/component.yml": MAKE_TEXT_YML,
        "components/make_text/make_text.py": MAKE_TEXT_PY,
        "components/publish/component.yml": PUBLISH_YML,
        "components/publish/publish.py": PUBLISH_PY,
        "shared/helpers/__init__.py": "",
        "shared/helpers/shout.py": "def shout(text):\n    return text.upper()\n",
        "data/in.txt": "hello",
    }
    return write_project(tmp_path / "project", files)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    # One SQLite store for the module: creating its tables costs seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def build_job(root: Path, data: Path | str | None = None, **make_text_inputs):
    from azure.ai.ml import Input, dsl, load_component

    make_text = load_component(source=root / "components/make_text/component.yml")
    publish = load_component(source=root / "components/publish/component.yml")
    fail_first = make_text_inputs.pop("fail_first_attempt", False)

    @dsl.pipeline(name="tiny", default_compute="cpu")
    def tiny(source):
        text = make_text(source=source, **make_text_inputs)
        receipt = publish(text=text.outputs.text, fail_first_attempt=fail_first)
        return {"receipt": receipt.outputs.receipt}

    return tiny(source=Input(type="uri_folder", path=str(data or root / "data")))


def backend(root: Path, tracking_uri: str, **kwargs) -> LocalBackend:
    return LocalBackend(root / "outputs", root, stream_logs=False, tracking_uri=tracking_uri, **kwargs)


def statuses(result) -> dict[str, str]:
    return {step.name: step.status for step in result.steps}


def test_runs_in_dependency_order_and_resolves_inputs(project, tracking_uri):
    result = backend(project, tracking_uri).run(build_job(project, label="x"), "tests")
    assert statuses(result) == {"text": "completed", "receipt": "completed"}
    receipt = (result.outputs["receipt"] / "receipt.txt").read_text()
    assert receipt == "published HELLO!x after 1 attempt(s)"
    # Shared code came from the step's snapshot (additional_includes), not from a PYTHONPATH pointing into the repo.
    log = (result.steps[0].log).read_text()
    assert "PYTHONPATH: None" in log
    helpers_from = Path(log.split("helpers from: ", 1)[1].splitlines()[0])
    assert not helpers_from.is_relative_to((project / "shared").resolve())
    assert helpers_from.name == "shout.py"


def test_second_run_reuses_deterministic_steps_only(project, tracking_uri):
    first = backend(project, tracking_uri).run(build_job(project), "tests")
    second = backend(project, tracking_uri).run(build_job(project), "tests")
    assert statuses(second) == {"text": "reused", "receipt": "completed"}
    assert second.steps[0].outputs == first.steps[0].outputs
    assert second.steps[0].cache_key == first.steps[0].cache_key


@pytest.mark.parametrize(
    "change",
    ["parameter", "input_content", "code", "shared_include"],
)
def test_any_change_to_what_defines_a_step_invalidates_its_cache(project, tracking_uri, change):
    first = backend(project, tracking_uri).run(build_job(project), "tests")
    kwargs = {}
    if change == "parameter":
        kwargs["repeat"] = 2
    elif change == "input_content":
        (project / "data/in.txt").write_text("hello again")
    elif change == "code":
        script = project / "components/make_text/make_text.py"
        script.write_text(script.read_text() + "\n# a comment changes the snapshot\n")
    else:
        (project / "shared/helpers/shout.py").write_text("def shout(text):\n    return text.upper() + '?'\n")
    second = backend(project, tracking_uri).run(build_job(project, **kwargs), "tests")
    assert statuses(second)["text"] == "completed"
    assert second.steps[0].cache_key != first.steps[0].cache_key


def test_what_the_ignore_file_leaves_out_neither_ships_nor_misses_the_cache(project, tracking_uri):
    """Azure ML leaves out of a code upload what the folder's .amlignore names; so does the local snapshot."""
    folder = project / "components/make_text"
    (folder / ".amlignore").write_text("mlflow.db\nmlruns/\n")
    first = backend(project, tracking_uri).run(build_job(project), "tests")
    (folder / "mlflow.db").write_bytes(b"left behind by running the script by hand")
    (folder / "mlruns" / "0").mkdir(parents=True)
    (folder / "mlruns" / "0" / "meta.yaml").write_text("x")
    second = backend(project, tracking_uri).run(build_job(project), "tests")
    assert statuses(second)["text"] == "reused" and second.steps[0].cache_key == first.steps[0].cache_key
    (snapshot,) = (project / "outputs" / "snapshots").glob("make_text-*")
    assert (snapshot / "make_text.py").is_file() and not (snapshot / "mlflow.db").exists()
    assert not list(snapshot.rglob("meta.yaml"))

    (folder / ".amlignore").unlink()  # without the rule the same files are code: Azure would upload them
    third = backend(project, tracking_uri).run(build_job(project), "tests")
    assert statuses(third)["text"] == "completed" and third.steps[0].cache_key != first.steps[0].cache_key


def test_force_rerun_ignores_the_cache(project, tracking_uri):
    backend(project, tracking_uri).run(build_job(project), "tests")
    forced = backend(project, tracking_uri, force_rerun=True).run(build_job(project), "tests")
    assert statuses(forced) == {"text": "completed", "receipt": "completed"}


def test_failed_step_stops_the_pipeline_and_a_rerun_continues_from_its_outputs(project, tracking_uri):
    job = build_job(project, fail_first_attempt=True)
    with pytest.raises(LocalRunError, match=r"step receipt failed; see its log: .*step\.log"):
        backend(project, tracking_uri).run(job, "tests")
    log = next((project / "outputs/steps").glob("publish-*/step.log")).read_text()
    assert "simulated pre-emption on attempt 1" in log
    # The interrupted attempt's output folder is kept, as on a pre-empted Azure node: attempt 2 sees it.
    result = backend(project, tracking_uri).run(build_job(project, fail_first_attempt=True), "tests")
    assert (result.outputs["receipt"] / "receipt.txt").read_text().endswith("after 2 attempt(s)")


def test_mlflow_records_a_parent_run_with_one_child_per_executed_step(project, tracking_uri):
    from mlflow.tracking import MlflowClient

    result = backend(project, tracking_uri).run(build_job(project, label="mlflow"), "tests-mlflow")
    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["steps_reused"] == 0
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert sorted(run.info.run_name for run in children) == ["receipt", "text"]
    summary = json.loads(Path(client.download_artifacts(result.run_id, "pipeline_summary.json")).read_text())
    assert [step["status"] for step in summary["steps"]] == ["completed", "completed"]


def test_inputs_outside_the_project_are_refused(project, tracking_uri, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "in.txt").write_text("secret")
    with pytest.raises(LocalRunError, match="outside the project and the output root"):
        backend(project, tracking_uri).run(build_job(project, data=outside), "tests")


def test_azure_asset_inputs_are_refused_with_a_pointer_to_the_local_preset(project, tracking_uri):
    job = build_job(project, data="azureml:chat-data:3")
    with pytest.raises(LocalRunError, match="points at an Azure asset"):
        backend(project, tracking_uri).run(job, "tests")


def test_out_of_range_parameters_are_refused_like_azure_would(project, tracking_uri):
    with pytest.raises(LocalRunError, match=r"repeat=9 is outside \[1, 5\]"):
        backend(project, tracking_uri).run(build_job(project, repeat=9), "tests")


def test_resolve_command_drops_optional_blocks_and_substitutes_like_azure():
    command = "python s.py --a '${{inputs.a}}' $[[--b ${{inputs.b}}]] $[[--c ${{inputs.c}}]] --d ${{inputs.d}}"
    command += " --out ${{outputs.o}}"
    inputs = {"a": "train[:1%]", "b": None, "c": True, "d": "/my data"}
    resolved = resolve_command(command, inputs, {"o": Path("/x y")}, path_inputs=frozenset({"d"}))
    # Literals raw (the spec quotes what needs quoting, as on Azure ML); local paths quoted.
    assert resolved == "python s.py --a 'train[:1%]'  --c True --d '/my data' --out '/x y'"


def test_hash_path_depends_on_content_and_names_not_timestamps(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("1")
    first = hash_path(folder)
    (folder / "a.txt").write_text("1")  # same content, new mtime
    assert hash_path(folder) == first
    (folder / "a.txt").rename(folder / "b.txt")
    assert hash_path(folder) != first


def test_the_step_cache_key_recipe_is_pinned():
    """A refactor that changes what is hashed would make every cached `make run` step miss: these are the keys the
    recipe gave before the local backend was split into pipelines/local/. Change them only with CACHE_FORMAT."""
    from types import SimpleNamespace

    from pipelines.local.cache import step_key

    component = SimpleNamespace(
        name="make_text",
        version="1",
        environment="azureml:chatft-train:1",
        command="python make_text.py --x ${{inputs.x}}",
    )
    one = SimpleNamespace(component=component, distribution=None)
    four = SimpleNamespace(
        name="n",
        component=component,
        distribution=SimpleNamespace(type="pytorch", process_count_per_instance=2),
        resources=SimpleNamespace(instance_count=2),
    )
    inputs = {"x": 3, "data": "d4ta"}
    assert step_key(one, "c0de", inputs)[0] == "cb48efbb44df053e1e2baac779043a612e40ab19342e622731fc16f07b7d2440"
    assert step_key(four, "c0de", inputs)[0] == "c85e6fa58db7768808a3f947b36398cd8494d825a2430cc8310ebabe1ba19d13"
