"""The Bicep clusters: sized from infra/compute.json, scaled to zero, run as the user-assigned identity."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.helpers.bicep import INFRA, ROOT, module_of, ref, resources_of


def _render(value: Any, cluster: dict[str, Any]) -> Any:
    """Evaluate the cluster module's expressions against one compute.json entry."""
    if isinstance(value, dict) and "operator" in value:
        owner, _, key = ref(value).partition(".")
        assert owner == "cluster", f"unexpected expression {value}"
        return cluster[key]
    if isinstance(value, dict):
        return {k: _render(v, cluster) for k, v in value.items()}
    if isinstance(value, str):
        return re.sub(r"\$\{cluster\.(\w+)\}", lambda m: str(cluster[m.group(1)]), value)
    return value


@pytest.mark.parametrize(
    ("symbol", "entry"),
    [("gpuCluster", "gpu_cluster"), ("gpuClusterX4", "gpu_cluster_x4"), ("cpuCluster", "cpu_cluster")],
)
def test_clusters_are_sized_by_compute_json(parsed, symbol, entry):
    compute_var = parsed["main.bicep"]["variables"]["compute"]["value"]["function"]
    assert compute_var == {
        "type": "load_json_content",
        "parameters": {"file_path": "compute.json", "json_path": None, "encoding": None},
    }
    module = module_of(parsed, symbol)
    assert module["detail"]["path"] == "modules/aml_compute_cluster.bicep"
    assert ref(module["config"]["params"]["cluster"]) == f"compute.{entry}"

    cluster = json.loads((INFRA / "compute.json").read_text())[entry]
    (resource,) = resources_of(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    config = resource["config"]
    assert _render(config["name"], cluster) == cluster["name"]
    assert config["properties"]["computeType"] == "AmlCompute"
    aml = _render(config["properties"]["properties"], cluster)
    assert aml["vmSize"] == cluster["vm_size"]
    assert aml["vmPriority"] == cluster["tier"]
    assert aml["scaleSettings"] == {
        "minNodeCount": cluster["min_nodes"],
        "maxNodeCount": cluster["max_nodes"],
        "nodeIdleTimeBeforeScaleDown": f"PT{cluster['idle_seconds_before_scaledown']}S",
    }


def test_gpu_cluster_scales_to_zero_after_two_idle_minutes(parsed):
    """The numbers the team agreed on, as rendered from compute.json into the ARM properties."""
    gpu = json.loads((INFRA / "compute.json").read_text())["gpu_cluster"]
    (resource,) = resources_of(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    aml = _render(resource["config"]["properties"]["properties"], gpu)
    assert aml["vmSize"] == "Standard_NC24ads_A100_v4"
    assert aml["scaleSettings"] == {"minNodeCount": 0, "maxNodeCount": 1, "nodeIdleTimeBeforeScaleDown": "PT120S"}


def test_compute_values_are_not_repeated_in_bicep():
    compute = json.loads((INFRA / "compute.json").read_text())
    literals = {compute[c][k] for c in ("gpu_cluster", "gpu_cluster_x4", "cpu_cluster") for k in ("name", "vm_size")}
    literals.add(compute["online_endpoint"]["instance_type"])
    for path in INFRA.rglob("*.bicep"):
        text = path.read_text()
        repeated = sorted(value for value in literals if value in text)
        assert not repeated, f"{path.relative_to(ROOT)} repeats {repeated}; read them from compute.json"


def test_clusters_run_as_the_user_assigned_identity(parsed):
    (resource,) = resources_of(
        parsed["modules/aml_compute_cluster.bicep"], "Microsoft.MachineLearningServices/workspaces/computes"
    ).values()
    assert resource["config"]["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {"'${identityId}'": {}}}
    for symbol in ("gpuCluster", "cpuCluster"):
        assert ref(module_of(parsed, symbol)["config"]["params"]["identityId"]) == "identity.outputs.id"
