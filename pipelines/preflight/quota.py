"""Quota: each VM size in infra/compute.json is looked up with the SDK's size listing (vCPUs, VM family) and its
family's usage (``ml_client.compute.list_usage()``); the need is vCPUs x max nodes per cluster, plus the endpoint's
instances with Azure ML's 20% upgrade reserve for both blue/green slots of a rollout, summed per family and against
the regional total."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipelines.preflight.inputs import setting
from pipelines.sdk_private import rest_field
from pipelines.settings import RunSettings

# Azure ML documents that managed online deployments reserve 20% extra capacity for upgrades on some VM sizes: the
# quota needed is ceil(1.2 x instances) x vCPUs (1 instance needs 2, 10 need 12). Applied to every size here.
ENDPOINT_UPGRADE_RESERVE = 0.2
# deploy_endpoint rolls out blue/green (components/deploy_endpoint/component.yml): the new slot runs beside the live
# one until traffic moves, so a redeployment needs quota for two deployments at once.
ROLLOUT_SLOTS = 2


@dataclass(frozen=True)
class QuotaNeed:
    vm_size: str
    nodes: int
    purpose: str


def finetune_placement(settings: RunSettings, compute: dict) -> tuple[dict, int, int]:
    """(cluster entry, nodes, GPUs per node) of the finetune step: the preset's finetune_compute."""
    placement = settings.finetune_compute
    cluster = compute[placement.cluster]
    return cluster, placement.nodes, int(cluster.get("gpus_per_node", 1))


def quota_needs(settings: RunSettings, compute: dict) -> list[QuotaNeed]:
    gpu, cpu = compute["gpu_cluster"], compute["cpu_cluster"]
    needs = [QuotaNeed(gpu["vm_size"], int(gpu["max_nodes"]), f"cluster {gpu['name']}")]
    cluster, nodes, gpus = finetune_placement(settings, compute)
    if cluster is not gpu:  # a multi-GPU preset: every node the finetune step holds, beside the evaluation cluster
        purpose = f"finetune on cluster {cluster['name']}: {nodes} node(s) x {gpus} GPUs = {nodes * gpus} GPUs"
        needs.append(QuotaNeed(cluster["vm_size"], nodes, purpose))
    needs.append(QuotaNeed(cpu["vm_size"], int(cpu["max_nodes"]), f"cluster {cpu['name']}"))
    if setting(settings, "deploy_endpoint", "target") == "azure":
        endpoint = compute["online_endpoint"]
        count = int(endpoint["instance_count"])
        reserved = ROLLOUT_SLOTS * math.ceil(count * (1 + ENDPOINT_UPGRADE_RESERVE))
        purpose = f"endpoint ({ROLLOUT_SLOTS} slots during a rollout x ({count} + upgrade reserve))"
        needs.append(QuotaNeed(endpoint["instance_type"], reserved, purpose))
    return needs


@dataclass
class QuotaRow:
    family: str
    purposes: list[str]
    need: int
    available: int | None
    limit: int | None
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def check_quota(ml_client, needs: list[QuotaNeed]) -> tuple[list[QuotaRow], str | None]:
    """Rows per VM family (and the regional total) with need vs available vCPUs, and the region."""
    region = ml_client.workspaces.get(ml_client.workspace_name).location
    where = f"in {region}" if region else "in the workspace's region"
    sizes = {}
    for size in ml_client.compute.list_sizes(location=region):
        sizes[str(rest_field(size, "name")).lower()] = size
    usages = list(ml_client.compute.list_usage(location=region))

    rows: dict[str, QuotaRow] = {}
    missing = []
    for need in needs:
        size = sizes.get(need.vm_size.lower())
        vcpus = rest_field(size, "vCPUs", "v_cp_us") if size is not None else None
        if size is None or vcpus is None:
            missing.append(QuotaRow(need.vm_size, [need.purpose], 0, None, None, f"size not offered {where}"))
            continue
        family = str(rest_field(size, "family"))
        row = rows.setdefault(family, QuotaRow(family, [], 0, None, None, ""))
        row.purposes.append(f"{need.purpose}: {need.nodes} x {need.vm_size} ({vcpus} vCPUs)")
        row.need += need.nodes * int(vcpus)

    for row in rows.values():
        _fill(row, _usage(usages, family=row.family), where)
    total = QuotaRow("total dedicated regional vCPUs", ["all of the above at once"], 0, None, None, "")
    total.need = sum(row.need for row in rows.values())
    _fill(total, _usage(usages, total=True), where)
    return [*rows.values(), *missing, total], region


def family_key(text: str) -> str | None:
    """The VM family in either spelling the service uses: the size listing's ``standardNCADSA100v4Family`` and the
    usage listing's ``Standard NCADSA100v4 Family Cluster Dedicated vCPUs`` both give ``ncadsa100v4``. None for
    anything else (LowPriority entries, totals)."""
    match = re.fullmatch(r"standard[ _]?(.+?)[ _]?family([ _]cluster[ _]dedicated[ _]vcpus)?", text.strip().lower())
    return match[1].replace(" ", "").replace("_", "") if match else None


def _usage_name(usage) -> tuple[str, str]:
    """(value, localizedValue) of a usage's name: a dict with the wire's keys, or the SDK's UsageName."""
    name = rest_field(usage, "name") or {}
    if isinstance(name, dict):
        return str(name.get("value") or ""), str(name.get("localizedValue") or name.get("localized_value") or "")
    return str(getattr(name, "value", "") or ""), str(getattr(name, "localized_value", "") or "")


def _usage(usages: list, family: str | None = None, total: bool = False):
    """The usage entry of a VM family, or of the dedicated regional total. Subscription-level entries only: the
    per-workspace and per-compute ones (ids under .../workspaces/...) only share that quota out."""
    wanted = family_key(family) if family else None
    for usage in usages:
        if "/workspaces/" in str(rest_field(usage, "id") or "").lower():
            continue
        value, localized = _usage_name(usage)
        kind = str(rest_field(usage, "type") or "").lower()
        regional = "total cluster dedicated regional vcpus" in {value.lower(), localized.lower()}
        if total and (regional or kind.endswith("/dedicatedcores/usages")):
            return usage
        if wanted and wanted in {family_key(value), family_key(localized)}:
            return usage
    return None


def _fill(row: QuotaRow, usage, where: str) -> None:
    if usage is None:
        row.status = f"no quota reported {where}"
        return
    limit, current = rest_field(usage, "limit"), rest_field(usage, "currentValue", "current_value")
    row.limit = None if limit is None else int(limit)
    if row.limit == 0:
        row.status = f"zero quota {where}"
    elif row.limit is None or current is None:
        # Unknown is not zero: reading a missing current value as 0 would overstate what is free.
        row.status = f"usage not reported {where}"
    else:
        row.available = row.limit - int(current)
        row.status = f"short by {row.need - row.available}" if row.available < row.need else "ok"


def quota_advice(row: QuotaRow) -> str:
    if row.status.startswith("size not offered"):
        where = row.status.removeprefix("size not offered ")
        return f"{row.family} is not offered {where}: pick another size in infra/compute.json"
    free = f"limit {row.limit}" if row.available is None else f"{row.available} available of limit {row.limit}"
    return (
        f"{row.family}: {row.status} (need {row.need} vCPUs, {free}); "
        "request more in Azure ML studio → Quota (or the Azure portal → Quotas → Machine learning), or lower "
        "max_nodes / pick another size in infra/compute.json"
    )
