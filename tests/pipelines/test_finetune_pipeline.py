"""The pipeline definition: builds from both presets, wires the right outputs, passes the SDK's own validation."""

from __future__ import annotations

import pytest

from pipelines.finetune_pipeline import COMPONENT_NAMES, build_pipeline, load_components
from pipelines.settings import PROJECT_ROOT, SettingsError, load_compute, load_settings

LOCAL = PROJECT_ROOT / "pipelines/config/local.yaml"
AZURE = PROJECT_ROOT / "pipelines/config/azure.yaml"


def binding(node, name):
    """Where a node input comes from: ("step", port), ("parent", input) or the literal value."""
    data = node.inputs[name]._data
    kind = type(data).__name__
    if kind == "NodeOutput":
        return (data._owner.name, data._port_name)
    if kind == "PipelineInput":
        return ("parent", data._port_name)
    return data


# (step, input) -> where it comes from: (upstream step, its output) or ("parent", the pipeline's input).
WIRING = {
    ("valid_train", "input_data"): ("splits", "train_data"),
    ("valid_validation", "input_data"): ("splits", "validation_data"),
    ("valid_validation", "reference_data"): ("splits", "train_data"),
    ("tuned", "train_data"): ("valid_train", "valid_data"),
    ("tuned", "base_model"): ("parent", "base_model"),
    ("evaluation", "tuned_model"): ("tuned", "merged_model"),
    ("evaluation", "validation_data"): ("valid_validation", "valid_data"),
    # The base model's half of the evaluation is its own step, fed only by the base model and the validation data.
    ("base_scores", "base_model"): ("parent", "base_model"),
    ("base_scores", "validation_data"): ("valid_validation", "valid_data"),
    ("evaluation", "base_score"): ("base_scores", "base_score"),
    ("registered", "quality_gate"): ("evaluation", "quality_gate"),
    ("registered", "split_info"): ("splits", "split_info"),
    ("endpoint_deployment", "model_info"): ("registered", "model_info"),
}


@pytest.fixture(scope="module")
def local_job(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("base_model")
    return build_pipeline(load_settings(LOCAL), base_model_path=str(model_dir))


def test_every_component_spec_loads():
    components = load_components()
    assert set(components) == set(COMPONENT_NAMES)
    for name, component in components.items():
        assert component.name == name
        spec_text = (PROJECT_ROOT / "components" / name / "component.yml").read_text()
        assert spec_text.startswith("$schema: "), f"{name}: $schema must be on line 1"
        # Environments are referenced by name and version, never "latest".
        assert ":" in str(component.environment) and "latest" not in str(component.environment)


def test_local_pipeline_passes_sdk_validation(local_job):
    result = local_job._validate()
    assert result.passed, str(result)


def test_steps_are_wired_output_to_input(local_job):
    jobs = local_job.jobs
    assert list(jobs) == [
        "splits",
        "valid_train",
        "valid_validation",
        "tuned",
        "base_scores",
        "evaluation",
        "registered",
        "endpoint_deployment",
    ]
    assert {(step, name): binding(jobs[step], name) for step, name in WIRING} == WIRING


def test_compute_and_endpoint_size_come_from_infra_compute_json(local_job):
    compute = load_compute()
    assert local_job.settings.default_compute == compute["cpu_cluster"]["name"]
    assert local_job.jobs["tuned"].compute == compute["gpu_cluster"]["name"]
    assert local_job.jobs["evaluation"].compute == compute["gpu_cluster"]["name"]
    deploy = local_job.jobs["endpoint_deployment"]
    assert binding(deploy, "instance_type") == compute["online_endpoint"]["instance_type"] == "Standard_NC8as_T4_v3"
    assert binding(deploy, "instance_count") == compute["online_endpoint"]["instance_count"] == 1
    assert compute["gpu_cluster"]["vm_size"] == "Standard_NC24ads_A100_v4"


def test_preset_values_reach_the_nodes(local_job):
    preset = load_settings(LOCAL).step("finetune")
    for name, value in preset.items():
        assert binding(local_job.jobs["tuned"], name) == value


def test_score_base_measures_with_evaluates_settings_which_have_one_home(local_job, tmp_path):
    """max_seq_length & co. are set once, on evaluate; score_base gets those values, a preset cannot split them."""
    from pipelines.finetune_pipeline import SCORING_SETTINGS

    evaluate_preset = load_settings(LOCAL).step("evaluate")
    evaluate_spec = load_components()["evaluate"]
    for name in SCORING_SETTINGS:
        expected = evaluate_preset.get(name, evaluate_spec.inputs[name].default)
        assert binding(local_job.jobs["base_scores"], name) == binding(local_job.jobs["evaluation"], name) == expected
    with pytest.raises(SettingsError, match="steps.score_base.max_new_tokens is not a settable input"):
        build_pipeline(load_settings(LOCAL, ["score_base.max_new_tokens=8"]), base_model_path=str(tmp_path))
    with pytest.raises(SettingsError, match="steps.score_base.safety_check is not a settable input"):
        build_pipeline(load_settings(LOCAL, ["score_base.safety_check=false"]), base_model_path=str(tmp_path))


def test_score_base_measures_safety_on_evaluates_safety_set_and_settings(tmp_path):
    """The base model's safety numbers come from score_base: it gets the safety settings a preset gives evaluate."""
    overrides = ["evaluate.safety_check=false", "evaluate.safety_max_new_tokens=8", f"evaluate.safety_data={tmp_path}"]
    job = build_pipeline(load_settings(LOCAL, overrides), base_model_path=str(tmp_path))
    for name, value in {"safety_check": False, "safety_max_new_tokens": 8}.items():
        assert binding(job.jobs["base_scores"], name) == binding(job.jobs["evaluation"], name) == value
    assert str(tmp_path) in str(binding(job.jobs["base_scores"], "safety_data"))
    assert binding(job.jobs["base_scores"], "safety_data") == binding(job.jobs["evaluation"], "safety_data")


def test_azure_preset_builds_with_registry_model_and_hf_dataset():
    job = build_pipeline(load_settings(AZURE))
    assert job._validate().passed
    assert job.inputs["base_model"]._data.path.startswith("azureml://registries/azureml/models/Phi-3-mini-4k-instruct")
    assert binding(job.jobs["splits"], "hf_dataset") == "HuggingFaceH4/ultrachat_200k"
    assert binding(job.jobs["endpoint_deployment"], "target") == "azure"


def test_dumped_yaml_loads_back_and_validates(local_job, tmp_path):
    from azure.ai.ml import load_job

    path = tmp_path / "pipeline.yml"
    local_job.dump(path)
    text = path.read_text()
    assert "${{parent.jobs.tuned.outputs.merged_model}}" in text
    reloaded = load_job(path)
    assert set(reloaded.jobs) == set(local_job.jobs)


def test_unknown_step_input_is_an_error_naming_file_and_key(tmp_path):
    preset = tmp_path / "bad.yaml"
    preset.write_text(LOCAL.read_text() + "  prep_data:\n    validation_fractoin: 0.3\n")
    with pytest.raises(SettingsError, match=r"bad.yaml: steps.prep_data.validation_fractoin is not a settable input"):
        build_pipeline(load_settings(preset), base_model_path=str(tmp_path))


def test_wired_inputs_cannot_be_overridden_by_a_preset(tmp_path):
    with pytest.raises(SettingsError, match="steps.finetune.train_data is not a settable input"):
        build_pipeline(load_settings(LOCAL, ["finetune.train_data=/etc"]), base_model_path=str(tmp_path))


def test_set_overrides_parse_yaml_scalars():
    settings = load_settings(LOCAL, ["finetune.learning_rate=1e-4", "finetune.packing=false"])
    assert settings.step("finetune")["learning_rate"] == 1e-4
    assert settings.step("finetune")["packing"] is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("experiment_name: x\nbase_model: m\nbase_model_name: n\nmodel_typo: 1\n", "unknown key"),
        ("experiment_name: x\n", "missing required key"),
        ("- a list\n", "expected a mapping"),
        ("experiment_name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_presets_are_rejected_with_the_file_name(tmp_path, text, message):
    preset = tmp_path / "preset.yaml"
    preset.write_text(text)
    with pytest.raises(SettingsError, match=rf"preset.yaml: .*{message}"):
        load_settings(preset)


def test_bad_override_syntax_is_explained():
    with pytest.raises(SettingsError, match="expected STEP.INPUT=VALUE"):
        load_settings(LOCAL, ["learning_rate=1"])
