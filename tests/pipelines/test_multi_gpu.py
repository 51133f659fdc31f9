"""Multi-GPU presets for Azure, offline: 4 GPUs on one node and 2 nodes of 4, the distribution block they put in the
job, the strategy input, the quota they need (every node and GPU) and a cost that scales with the node count."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from pipelines import preflight
from pipelines.azure.cli import SubmitOptions
from pipelines.finetune_pipeline import DISTRIBUTED_ENV, build_pipeline
from pipelines.settings import PROJECT_ROOT, SettingsError, load_compute, load_settings

CONFIG = PROJECT_ROOT / "pipelines" / "config"
# preset → (nodes, GPUs per node)
PRESETS = {"azure.yaml": (1, 1), "azure-4gpu.yaml": (1, 4), "azure-2node.yaml": (2, 4)}


def binding(node, name):
    return node.inputs[name]._data


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_places_finetune_on_every_gpu_and_keeps_the_global_batch(preset):
    nodes, gpus = PRESETS[preset]
    settings = load_settings(CONFIG / preset)
    job = build_pipeline(settings)
    assert job._validate().passed
    tuned, compute = job.jobs["tuned"], load_compute()
    assert job.jobs["evaluation"].compute == compute["gpu_cluster"]["name"]  # evaluation needs one GPU
    if nodes * gpus == 1:
        assert tuned.compute == compute["gpu_cluster"]["name"] and tuned.distribution.process_count_per_instance == 1
    else:
        assert tuned.compute == compute["gpu_cluster_x4"]["name"] and compute["gpu_cluster_x4"]["gpus_per_node"] == gpus
        assert tuned.distribution.type == "pytorch" and tuned.distribution.process_count_per_instance == gpus
        assert tuned.resources.instance_count == nodes and tuned.resources.shm_size == "16g"
        assert tuned.environment_variables == DISTRIBUTED_ENV
    # The same ~32k tokens per optimizer step on 1, 4 or 8 GPUs: processes × rows × accumulation = 16 rows.
    finetune = settings.step("finetune")
    rows = nodes * gpus * finetune["per_device_train_batch_size"] * finetune["gradient_accumulation_steps"]
    assert rows == 16 and finetune["max_seq_length"] == 2048


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_the_distributed_strategy_is_an_input_of_the_step(strategy):
    settings = load_settings(CONFIG / "azure-4gpu.yaml", [f"finetune.distributed_strategy={strategy}"])
    job = build_pipeline(settings)
    assert job._validate().passed and binding(job.jobs["tuned"], "distributed_strategy") == strategy
    assert "--distributed_strategy ${{inputs.distributed_strategy}}" in job.jobs["tuned"].component.command


def test_an_unknown_strategy_is_refused_by_the_step_with_the_choices(capsys):
    from tests.helpers.components import load_script

    finetune = load_script("component_finetune_multi_gpu", PROJECT_ROOT / "components" / "finetune" / "finetune.py")
    flags = ["--base_model", "m", "--train_data", "d", "--adapter", "a", "--merged_model", "m2", "--checkpoints", "c"]
    with pytest.raises(SystemExit):
        finetune.parse_args([*flags, "--distributed_strategy", "zero9"])
    assert "deepspeed_zero2" in capsys.readouterr().err  # (the SDK's validation does not check enums)


def test_dry_run_writes_valid_yaml_with_the_distribution_block(tmp_path, capsys):
    from azure.ai.ml import load_job

    from pipelines import run

    args = [
        "--backend",
        "azure",
        "--dry-run",
        "--config",
        str(CONFIG / "azure-2node.yaml"),
        "--output-root",
        str(tmp_path),
    ]
    assert run.main(run.parse_args(args)) == 0
    printed = capsys.readouterr().out
    assert "finetune on cluster gpu-a100x4: 2 node(s) x 4 GPUs = 8 GPUs: 2 x Standard_NC96ads_A100_v4" in printed
    dumped = yaml.safe_load((tmp_path / "azure" / "pipeline_job.yml").read_text())
    tuned = dumped["jobs"]["tuned"]
    assert tuned["distribution"] == {"type": "pytorch", "process_count_per_instance": 4}
    assert tuned["resources"] == {"instance_count": 2, "shm_size": "16g"}
    assert tuned["compute"] == "azureml:gpu-a100x4" and tuned["environment_variables"]["NCCL_IB_DISABLE"] == "1"
    assert "compute      finetune on gpu-a100x4, 2 node(s)" in printed
    reloaded = load_job(tmp_path / "azure" / "pipeline_job.yml")
    assert reloaded._validate().passed and reloaded.jobs["tuned"].resources.instance_count == 2


def _set_family_limit(sim, label: str, limit: int) -> None:
    """The subscription-level usage entry of a VM family (or the regional total) in the REST simulation."""
    name = (
        "Total Cluster Dedicated Regional vCPUs"
        if label == "total"
        else f"Standard {label} Family Cluster Dedicated vCPUs"
    )
    for entry in sim.usages:
        if entry["name"]["value"] == name and "/workspaces/" not in entry["id"]:
            entry["limit"], entry["currentValue"] = limit, 0


def test_preflight_counts_every_node_of_a_two_node_run_against_the_gpu_family(azure_sim):
    settings = load_settings(CONFIG / "azure-2node.yaml")
    _set_family_limit(azure_sim, "NCADSA100v4", 48)
    _set_family_limit(azure_sim, "total", 1000)
    report = preflight.run_preflight(settings, ml_client=azure_sim.client())
    row = next(r for r in report.quota if r.family == "standardNCADSA100v4Family")
    # evaluation's 1 x NC24ads (24 vCPUs) + finetune's 2 x NC96ads (96 vCPUs each, from the size listing)
    assert row.need == 24 + 2 * 96
    assert "finetune on cluster gpu-a100x4: 2 node(s) x 4 GPUs = 8 GPUs: 2 x Standard_NC96ads_A100_v4 (96 vCPUs)" in (
        row.purposes
    )
    assert not report.ok and row.status == "short by 168"
    _set_family_limit(azure_sim, "NCADSA100v4", 216)
    assert next(
        r for r in preflight.run_preflight(settings, ml_client=azure_sim.client()).quota if r.family == row.family
    ).ok


def test_cost_scales_with_the_node_count(tmp_path):
    overrides = {
        "prices": {"vm_hourly": {"Standard_NC96ads_A100_v4": 10.0, "Standard_NC24ads_A100_v4": 2.0}},
        "throughput": {"training_tokens_per_second": {"Standard_NC96ads_A100_v4": 1000}, "multi_node_efficiency": 0.5},
        "overhead": {"gpu_step_minutes": 6},
    }
    path = tmp_path / "pricing.json"
    path.write_text(json.dumps(overrides))
    base = load_settings(CONFIG / "azure-2node.yaml")
    idle = 120 / 3600
    for nodes in (1, 2):
        settings = dataclasses.replace(base, finetune_compute=dataclasses.replace(base.finetune_compute, nodes=nodes))
        report = preflight.run_preflight(settings, options=SubmitOptions(tokens=3_600_000, pricing=path))
        cost = {line.item: line.usd for line in report.cost}
        tokens_per_second = 1000 * nodes * (0.5 if nodes > 1 else 1.0)
        node_hours = 3_600_000 / tokens_per_second / 3600 + 6 / 60 + idle
        assert cost["finetune node time"] == pytest.approx(nodes * node_hours * 10.0)
        assert cost["GPU node time"] == pytest.approx((2 * 6 / 60 + idle) * 2.0)  # score_base + evaluate


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "finetune_compute: {cluster: gpu_cluster_h100}",
            "finetune_compute.cluster 'gpu_cluster_h100' is not a cluster",
        ),
        (
            "finetune_compute: {cluster: gpu_cluster_x4, nodes: 3}",
            "finetune_compute.nodes 3 must be an integer from 1 to 2",
        ),
        ("finetune_compute: {cluster: gpu_cluster_x4, gpus: 8}", "unknown key(s) finetune_compute.gpus"),
    ],
)
def test_bad_placements_are_errors_naming_the_file_and_key(tmp_path, section, message):
    preset = tmp_path / "preset.yaml"
    preset.write_text((CONFIG / "azure.yaml").read_text() + "\n" + section + "\n")
    with pytest.raises(SettingsError, match=r".*preset\.yaml: .*") as err:
        load_settings(preset)
    assert message in str(err.value)
