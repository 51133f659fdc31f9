"""Every private azure-ai-ml access of the project (pipelines/sdk_private.py), exercised against the pinned SDK: an
upgrade that renames or reshapes one fails here, naming it, instead of in a user's run."""

from __future__ import annotations

import importlib.metadata
import re

from pipelines import sdk_private
from pipelines.finetune_pipeline import build_pipeline
from pipelines.settings import PROJECT_ROOT, load_settings

LOCAL = PROJECT_ROOT / "pipelines/config/local.yaml"


def pinned(package: str) -> str:
    text = (PROJECT_ROOT / "constraints.txt").read_text()
    return re.search(rf"^{re.escape(package)}==(\S+)$", text, re.MULTILINE)[1]


def test_these_checks_ran_against_the_pinned_sdk():
    assert importlib.metadata.version("azure-ai-ml") == pinned("azure-ai-ml")


def test_validation_errors_passes_a_valid_pipeline_and_reports_a_broken_one(tmp_path):
    job = build_pipeline(load_settings(LOCAL), base_model_path=str(tmp_path))
    assert sdk_private.validation_errors(job) is None
    job.settings.default_compute = None
    for node in job.jobs.values():
        node.compute = None
    assert "jobs.tuned.compute" in (sdk_private.validation_errors(job) or "")


def test_input_bindings_name_the_upstream_step_the_pipeline_input_and_the_pipeline_output(tmp_path):
    job = build_pipeline(load_settings(LOCAL), base_model_path=str(tmp_path))
    tuned = job.jobs["tuned"]
    train = sdk_private.input_binding(tuned.inputs["train_data"])
    assert sdk_private.binding_kind(train) == "output"
    assert (sdk_private.upstream_step(train), sdk_private.port_name(train)) == ("valid_train", "valid_data")
    base = sdk_private.input_binding(tuned.inputs["base_model"])
    assert sdk_private.binding_kind(base) == "pipeline" and sdk_private.port_name(base) == "base_model"
    assert sdk_private.binding_kind(sdk_private.input_binding(job.inputs["base_model"])) == "value"
    assert sdk_private.pipeline_output_name(tuned.outputs["adapter"]) == "adapter"


def test_rest_field_reads_the_wire_keys_the_sdk_copies_onto_sizes_and_usages(azure_sim):
    ml_client = azure_sim.client()
    size = next(s for s in ml_client.compute.list_sizes(location="eastus2") if s.name == "Standard_D4s_v3")
    assert size.v_cp_us is None, "the SDK now fills v_cp_us: preflight could read the public attribute instead"
    assert sdk_private.rest_field(size, "vCPUs", "v_cp_us") == 4
    usage = next(u for u in ml_client.compute.list_usage(location="eastus2") if "DSv3" in str(u.id))
    assert usage.current_value is None and sdk_private.rest_field(usage, "currentValue", "current_value") == 4
    assert sdk_private.rest_field(usage, "name")["localizedValue"] == "Standard DSv3 Family Cluster Dedicated vCPUs"


def test_workspace_guid_and_client_credential(azure_sim):
    from tests.helpers.azure_transport import fixture

    ml_client = azure_sim.client()
    workspace = ml_client.workspaces.get(ml_client.workspace_name)
    assert sdk_private.workspace_guid(workspace) == fixture("workspace.json")["properties"]["workspaceId"]
    assert hasattr(sdk_private.client_credential(ml_client), "get_token")


def test_ignore_file_reads_amlignore_before_gitignore(tmp_path):
    (tmp_path / ".gitignore").write_text("*.log\n")
    assert sdk_private.ignore_file(tmp_path).is_file_excluded(tmp_path / "x.log")
    (tmp_path / ".amlignore").write_text("mlflow.db\nmlruns/\n")  # .amlignore wins, as on upload
    rules = sdk_private.ignore_file(tmp_path)
    assert rules.is_file_excluded(tmp_path / "mlflow.db") and rules.is_file_excluded(tmp_path / "mlruns" / "m.yaml")
    assert not rules.is_file_excluded(tmp_path / "x.log") and not rules.is_file_excluded(tmp_path / "step.py")
    # The shipped components leave out what a run by hand in their folder writes.
    shipped = sdk_private.ignore_file(PROJECT_ROOT / "components" / "evaluate")
    assert shipped.is_file_excluded(PROJECT_ROOT / "components" / "evaluate" / "mlflow.db")


def test_fast_experimental_check_answers_as_the_sdks_stack_walk_and_still_warns_once(caplog):
    from azure.ai.ml._utils import _experimental
    from azure.ai.ml.entities import DataCollector

    sdk_check = sdk_private.fast_experimental_check()
    assert _experimental._should_skip_warning is not sdk_check

    def _from_rest_object():  # the frame name the SDK looks for
        return sdk_check(), _experimental._should_skip_warning()

    def nested():
        return _from_rest_object()

    assert nested() == (True, True)
    assert (sdk_check(), _experimental._should_skip_warning()) == (False, False)
    # Built by hand, an experimental class still says so, once a session, through the SDK's own wrapper.
    _experimental._warning_cache.clear()
    with caplog.at_level("WARNING", logger=_experimental.__name__):
        DataCollector(collections={})
        DataCollector(collections={})
    assert len([r for r in caplog.records if "Class DataCollector" in r.message]) == 1
