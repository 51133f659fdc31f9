"""The fine-tuning pipeline, defined once with the azure-ai-ml SDK (v2).

This file only wires components: it loads their specs, calls them, and names each step by what it
produces. The same ``PipelineJob`` object is submitted to Azure ML or run by ``pipelines.local_backend``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipelines.settings import PROJECT_ROOT, RunSettings, SettingsError, load_compute

COMPONENTS_DIR = PROJECT_ROOT / "components"
COMPONENT_NAMES = (
    "prep_data",
    "validate_chat_jsonl",
    "finetune",
    "score_base",
    "evaluate",
    "register_model",
    "deploy_endpoint",
)
# score_base measures the base model as evaluate measures the tuned one: these come from evaluate's settings. The
# safety ones too: score_base asks the base model evaluate's safety set, so evaluate never loads the base model.
SCORING_SETTINGS = (
    "max_seq_length",
    "num_generation_samples",
    "max_new_tokens",
    "batch_size",
    "safety_check",
    "safety_data",
    "safety_max_new_tokens",
)
# Inputs the pipeline wires itself; a preset may not set them.
WIRED_INPUTS = {
    "prep_data": {"raw_data"},
    "validate_chat_jsonl": {"input_data", "reference_data", "base_model", "max_seq_length"},
    "finetune": {"base_model", "train_data", "validation_data"},
    "score_base": {"base_model", "validation_data", *SCORING_SETTINGS},
    "evaluate": {"base_model", "tuned_model", "validation_data", "base_score", "model_name"},
    "register_model": {"tuned_model", "eval_report", "quality_gate", "split_info", "base_model_name"},
    "deploy_endpoint": {"model_info", "instance_type", "instance_count"},
}


# What a multi-GPU finetune needs besides its processes (Azure ML sets MASTER_ADDR, RANK, ... itself).
DISTRIBUTED_ENV = {
    "NCCL_DEBUG": "WARN",  # NCCL's warnings and errors in the step's logs, not its start-up chatter
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",  # a rank that dies fails the collective instead of hanging the others
    "NCCL_IB_DISABLE": "1",  # NC A100 v4 nodes have no InfiniBand (ND sizes do): use TCP at once, no probing
}


def place_finetune(node, settings: RunSettings, compute: dict[str, Any]) -> None:
    """Put the finetune node on its cluster; with more than one GPU in all, as Azure ML's `distribution: pytorch`:
    one process per GPU on each of ``nodes`` nodes, a larger /dev/shm, and the NCCL environment above."""
    from azure.ai.ml import PyTorchDistribution
    from azure.ai.ml.entities import JobResourceConfiguration

    placement = settings.finetune_compute
    cluster = compute[placement.cluster]
    node.compute = cluster["name"]
    per_node = int(cluster.get("gpus_per_node", 1))
    if per_node * placement.nodes == 1:
        return  # the component's own block: one process on one node
    node.distribution = PyTorchDistribution(process_count_per_instance=per_node)
    node.resources = JobResourceConfiguration(instance_count=placement.nodes, shm_size=placement.shm_size)
    node.environment_variables = dict(DISTRIBUTED_ENV)


def load_components() -> dict[str, Any]:
    from azure.ai.ml import load_component

    # The SDK logs an "experimental class" line per schema at import/load time: noise for users.
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    return {name: load_component(source=COMPONENTS_DIR / name / "component.yml") for name in COMPONENT_NAMES}


def check_step_settings(settings: RunSettings, components: dict[str, Any]) -> None:
    """Fail early, naming the file and key, when a preset sets an input a component does not have."""
    for step, values in settings.steps.items():
        if step not in components:
            raise SettingsError(f"{settings.source}: steps.{step} is not a component (known: {', '.join(components)})")
        spec = COMPONENTS_DIR / step / "component.yml"
        allowed = set(components[step].inputs) - WIRED_INPUTS.get(step, set())
        for key in values:
            if key not in allowed:
                raise SettingsError(
                    f"{settings.source}: steps.{step}.{key} is not a settable input of {spec.relative_to(PROJECT_ROOT)}"
                    f" (settable: {', '.join(sorted(allowed))})"
                )


def is_model_asset(value: str) -> bool:
    """A registered model: ``azureml://registries/<r>/models/<name>/versions/<n>`` (or a workspace's
    ``azureml://.../models/...``), or the short ``azureml:<name>:<version>`` form of the base model."""
    return value.startswith("azureml:") and ("/models/" in value or "://" not in value)


def _as_input(value: str | None, model: bool = False):
    """A path or asset URI as an Input; local paths are made absolute from the project root. A model asset is an
    ``mlflow_model`` input (the type of the registry's Phi-3 models), data and local folders are ``uri_folder``
    (the local backend reads a folder either way; model_source finds the Hugging Face folder inside an MLflow one)."""
    from azure.ai.ml import Input

    if value is None:
        return None
    if model and is_model_asset(value):
        return Input(type="mlflow_model", path=value)
    if value.startswith("azureml:") or "://" in value:
        return Input(type="uri_folder", path=value)
    path = Path(value)
    return Input(type="uri_folder", path=str(path if path.is_absolute() else PROJECT_ROOT / path))


def build_pipeline(settings: RunSettings, base_model_path: str | None = None, components: dict | None = None):
    """Build the PipelineJob. ``base_model_path`` replaces ``settings.base_model`` (e.g. a converted local model);
    ``components`` replaces the specs of components/ (e.g. the registered components, by name)."""
    from azure.ai.ml import dsl

    components = components or load_components()
    check_step_settings(settings, components)
    compute = load_compute()
    gpu, cpu = compute["gpu_cluster"]["name"], compute["cpu_cluster"]["name"]
    endpoint = compute["online_endpoint"]

    prep_data = components["prep_data"]
    validate_chat_jsonl = components["validate_chat_jsonl"]
    finetune = components["finetune"]
    evaluate = components["evaluate"]
    score_base = components["score_base"]
    register_model = components["register_model"]
    deploy_endpoint = components["deploy_endpoint"]

    # The gate compares with the champion of the name register_model registers under (one home: its input).
    model_name = settings.step("register_model").get("model_name", register_model.inputs["model_name"].default)
    # Token counts and too_long warnings use the base model's tokenizer and the length training truncates to.
    max_seq_length = settings.step("finetune").get("max_seq_length", finetune.inputs["max_seq_length"].default)
    scoring = {k: settings.step("evaluate").get(k, evaluate.inputs[k].default) for k in SCORING_SETTINGS}

    @dsl.pipeline(
        name="chat_finetune",
        display_name=f"Fine-tune {settings.base_model_name}",
        description="prep → validate → fine-tune (and score the base) → evaluate → register → deploy",
        default_compute=cpu,
    )
    def chat_finetune(base_model, raw_data=None):
        splits = prep_data(raw_data=raw_data, **settings.step("prep_data"))
        token_counting = {"base_model": base_model, "max_seq_length": max_seq_length}
        valid_train = validate_chat_jsonl(
            input_data=splits.outputs.train_data, **token_counting, **settings.step("validate_chat_jsonl")
        )
        valid_validation = validate_chat_jsonl(
            input_data=splits.outputs.validation_data,
            reference_data=splits.outputs.train_data,  # a validation chat also in train is leakage
            **token_counting,
            **settings.step("validate_chat_jsonl"),
        )
        tuned = finetune(
            base_model=base_model,
            train_data=valid_train.outputs.valid_data,
            validation_data=valid_validation.outputs.valid_data,
            **settings.step("finetune"),
        )
        place_finetune(tuned, settings, compute)  # the GPU cluster, or the preset's multi-GPU placement
        # The base model's scores depend on nothing training does: a step of their own is reused across runs.
        base_scores = score_base(base_model=base_model, validation_data=valid_validation.outputs.valid_data, **scoring)
        base_scores.compute = gpu
        evaluation = evaluate(
            base_model=base_model,
            tuned_model=tuned.outputs.merged_model,
            validation_data=valid_validation.outputs.valid_data,
            base_score=base_scores.outputs.base_score,
            model_name=model_name,
            **settings.step("evaluate") | scoring,  # the same scoring settings as score_base's, spelled out
        )
        evaluation.compute = gpu
        registered = register_model(
            tuned_model=tuned.outputs.merged_model,
            eval_report=evaluation.outputs.eval_report,
            quality_gate=evaluation.outputs.quality_gate,
            split_info=splits.outputs.split_info,
            base_model_name=settings.base_model_name,
            **settings.step("register_model"),
        )
        endpoint_deployment = deploy_endpoint(
            model_info=registered.outputs.model_info,
            instance_type=endpoint["instance_type"],
            instance_count=endpoint["instance_count"],
            **settings.step("deploy_endpoint"),
        )
        return {
            "adapter": tuned.outputs.adapter,
            "eval_report": evaluation.outputs.eval_report,
            "model_info": registered.outputs.model_info,
            "endpoint_info": endpoint_deployment.outputs.endpoint_info,
        }

    job = chat_finetune(
        base_model=_as_input(base_model_path or settings.base_model, model=True),
        raw_data=_as_input(settings.raw_data),
    )
    job.experiment_name = settings.experiment_name
    return job
