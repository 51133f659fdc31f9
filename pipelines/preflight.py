"""Before spending: is there quota for the clusters and the endpoint, and what will the run cost?

    make preflight                 # quota (needs the workspace) + cost estimate
    make preflight DRY_RUN=1       # cost estimate only, no network
    python -m pipelines.preflight --data data/sample --tokens 3000000 --pricing my_prices.json

Quota: each VM size in infra/compute.json is looked up with the SDK's size listing (vCPUs, VM family) and its
family's usage (``ml_client.compute.list_usage()``); the need is vCPUs x max nodes per cluster, plus the endpoint's
instances with Azure ML's 20% upgrade reserve for both blue/green slots of a rollout, summed per family and against
the regional total.

Cost: training tokens / tokens per second x the GPU's hourly price, plus per-step node overhead, plus the
endpoint's hourly price while it is deployed. Training tokens (every position through the model, all epochs) come,
in order, from ``--tokens``, from a data report's ``tokens`` block (``--data-report``), from the local data
(characters / 4: an approximation, said so in the table), or, for a Hugging Face dataset, from its split size in
``infra/pricing.json``. Prices and tokens/s there are assumptions with their source and date, never measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatft.errors import UsageError
from pipelines.azure.cli import PreflightRefused, SubmitOptions, azure_parser, azure_settings, exit_code
from pipelines.azure.client import connect
from pipelines.azure.plan import local_data_path, prep_data_module, with_local_data
from pipelines.sdk_private import rest_field
from pipelines.settings import PROJECT_ROOT, RunSettings, load_compute

PRICING_FILE = PROJECT_ROOT / "infra" / "pricing.json"
COMPONENTS_DIR = PROJECT_ROOT / "components"
# Azure ML documents that managed online deployments reserve 20% extra capacity for upgrades on some VM sizes: the
# quota needed is ceil(1.2 x instances) x vCPUs (1 instance needs 2, 10 need 12). Applied to every size here.
ENDPOINT_UPGRADE_RESERVE = 0.2
# deploy_endpoint rolls out blue/green (components/deploy_endpoint/component.yml): the new slot runs beside the live
# one until traffic moves, so a redeployment needs quota for two deployments at once.
ROLLOUT_SLOTS = 2
HOURS_PER_MONTH = 730
GPU_STEPS = ("finetune", "score_base", "evaluate")


class PreflightError(UsageError, ValueError):
    """Preflight cannot estimate or check something; the message says what to pass or fix."""


# ---- assumptions ----------------------------------------------------------------------------------------------
def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def load_pricing(override: Path | None = None) -> dict[str, Any]:
    """infra/pricing.json, with an optional override file (same shape, any subset of keys) merged over it."""
    pricing = json.loads(PRICING_FILE.read_text(encoding="utf-8"))
    if override:
        try:
            pricing = _merge(pricing, json.loads(Path(override).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise PreflightError(f"--pricing {override}: {err}") from None
    return pricing


def _spec_default(component: str, name: str) -> Any:
    """A component input's default, read from its component.yml (the one home of defaults)."""
    import yaml

    spec = yaml.safe_load((COMPONENTS_DIR / component / "component.yml").read_text(encoding="utf-8"))
    return spec["inputs"][name].get("default")


def _setting(settings: RunSettings, component: str, name: str) -> Any:
    value = settings.step(component).get(name)
    return _spec_default(component, name) if value is None else value


# ---- tokens ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenEstimate:
    processed: int  # token positions that go through forward and backward, all epochs: what the GPU time is for
    basis: str  # how the number was obtained, printed with it


def _training_passes(settings: RunSettings, per_epoch: int) -> tuple[int, str]:
    """Processed tokens from tokens per epoch: num_train_epochs, or max_steps of packed rows when that is set."""
    max_steps = int(_setting(settings, "finetune", "max_steps"))
    if max_steps > 0:
        batch = int(_setting(settings, "finetune", "per_device_train_batch_size"))
        accumulation = int(_setting(settings, "finetune", "gradient_accumulation_steps"))
        length = int(_setting(settings, "finetune", "max_seq_length"))
        return max_steps * batch * accumulation * length, f"max_steps {max_steps} x {batch}x{accumulation} rows"
    epochs = float(_setting(settings, "finetune", "num_train_epochs"))
    return round(per_epoch * epochs), f"{epochs:g} epoch(s)"


def _tokens_from_report(path: Path) -> int:
    """Tokens per epoch from a validate step's report: processed_per_epoch (every position that goes through the
    model after truncation, what compute costs), else trained_per_epoch (the loss tokens: an undercount)."""
    try:
        tokens = json.loads(Path(path).read_text(encoding="utf-8"))["tokens"]
        value = tokens.get("processed_per_epoch", tokens.get("trained_per_epoch"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PreflightError(f"--data-report {path}: expected a validate step's data_report.json ({err})") from None
    if value is None:
        raise PreflightError(
            f"--data-report {path}: the report has no token counts (tokens.counted_with is "
            f"{tokens.get('counted_with')!r}: validate ran without a tokenizer); pass --tokens N instead"
        )
    return int(value)


def _tokens_from_local_data(path: Path, settings: RunSettings, assumptions: dict) -> tuple[int, int]:
    """(train tokens per epoch, records): content characters / chars_per_token + template tokens, capped per chat at
    max_seq_length, times the train share of the split."""
    prep = prep_data_module()
    try:
        source = prep.read_local_records(path)
    except FileNotFoundError as err:  # NoJsonlFilesError included
        raise PreflightError(f"training data: {err}") from None
    chars_per_token = float(assumptions["chars_per_token"])
    per_message = int(assumptions["template_tokens_per_message"])
    max_length = int(_setting(settings, "finetune", "max_seq_length"))
    total = 0
    for record in source.records:
        try:
            messages = json.loads(record)["messages"]
            chars = sum(len(str(message.get("content") or "")) for message in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # validate_chat_jsonl rejects it; it is never trained on
        total += min(max_length, math.ceil(chars / chars_per_token) + per_message * len(messages))
    train_share = 1.0 - float(_setting(settings, "prep_data", "validation_fraction"))
    return round(total * train_share), len(source.records)


def _tokens_from_hf(settings: RunSettings, pricing: dict) -> tuple[int, str]:
    import datasets

    prep = settings.step("prep_data")
    name, split = prep["hf_dataset"], str(_setting(settings, "prep_data", "hf_split"))
    known = pricing["hf_datasets"].get(name)
    if not known:
        raise PreflightError(
            f"no size known for Hugging Face dataset {name}: pass --tokens N (training tokens), or add it to "
            f"hf_datasets in {PRICING_FILE.relative_to(PROJECT_ROOT)} or a --pricing file"
        )
    try:
        spans = datasets.ReadInstruction.from_spec(split).to_absolute(known["rows"])
    except (ValueError, AssertionError) as err:
        raise PreflightError(f"steps.prep_data.hf_split {split!r}: {err}") from None
    rows = sum(span.to - span.from_ for span in spans)
    max_length = int(_setting(settings, "finetune", "max_seq_length"))
    per_row = min(int(known["tokens_per_row"]), max_length)
    train_share = 1.0 - float(_setting(settings, "prep_data", "validation_fraction"))
    return round(rows * per_row * train_share), f"{rows:,} rows of {name} [{split}] x {per_row:,} tokens/row (assumed)"


def estimate_tokens(
    settings: RunSettings,
    local_data: Path | None,
    pricing: dict,
    tokens: int | None = None,
    data_report: Path | None = None,
) -> TokenEstimate:
    if tokens is not None:
        if tokens <= 0:
            raise PreflightError(f"--tokens {tokens}: must be a positive number of training tokens")
        return TokenEstimate(tokens, "given with --tokens")
    if data_report is not None:
        per_epoch = _tokens_from_report(data_report)
        processed, passes = _training_passes(settings, per_epoch)
        return TokenEstimate(processed, f"{per_epoch:,} tokens/epoch counted in {data_report} x {passes}")
    if local_data is not None:
        per_epoch, records = _tokens_from_local_data(local_data, settings, pricing["tokens"])
        processed, passes = _training_passes(settings, per_epoch)
        rule = f"characters / {pricing['tokens']['chars_per_token']:g}"
        return TokenEstimate(processed, f"{records:,} local records, train share, {rule} (approximation) x {passes}")
    if settings.step("prep_data").get("hf_dataset"):
        per_epoch, basis = _tokens_from_hf(settings, pricing)
        processed, passes = _training_passes(settings, per_epoch)
        return TokenEstimate(processed, f"{basis}, train share x {passes}")
    raise PreflightError("no training data to estimate tokens from: pass --data PATH or --tokens N")


# ---- quota ----------------------------------------------------------------------------------------------------
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
    if _setting(settings, "deploy_endpoint", "target") == "azure":
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


def _family_key(text: str) -> str | None:
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
    wanted = _family_key(family) if family else None
    for usage in usages:
        if "/workspaces/" in str(rest_field(usage, "id") or "").lower():
            continue
        value, localized = _usage_name(usage)
        kind = str(rest_field(usage, "type") or "").lower()
        regional = "total cluster dedicated regional vcpus" in {value.lower(), localized.lower()}
        if total and (regional or kind.endswith("/dedicatedcores/usages")):
            return usage
        if wanted and wanted in {_family_key(value), _family_key(localized)}:
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


# ---- cost -----------------------------------------------------------------------------------------------------
@dataclass
class CostLine:
    item: str
    detail: str
    usd: float | None


def estimate_cost(settings: RunSettings, tokens: TokenEstimate, compute: dict, pricing: dict) -> list[CostLine]:
    prices = pricing["prices"]["vm_hourly"]
    gpu, cpu = compute["gpu_cluster"], compute["cpu_cluster"]

    def price(vm_size: str) -> float:
        if vm_size not in prices:
            raise PreflightError(
                f"no hourly price for {vm_size}: add it to prices.vm_hourly in "
                f"{PRICING_FILE.relative_to(PROJECT_ROOT)} or a --pricing file"
            )
        return float(prices[vm_size])

    cluster, nodes, gpus = finetune_placement(settings, compute)
    per_node = pricing["throughput"]["training_tokens_per_second"].get(cluster["vm_size"])
    if not per_node:
        raise PreflightError(
            f"no training tokens/s assumed for {cluster['vm_size']}: add it to throughput in pricing.json"
        )
    # Several nodes: each adds its tokens/s times the assumed scaling efficiency (gradients cross the network).
    efficiency = float(pricing["throughput"].get("multi_node_efficiency", 1.0)) if nodes > 1 else 1.0
    throughput = float(per_node) * nodes * efficiency
    overhead = pricing["overhead"]
    idle_hours = lambda cluster: float(cluster["idle_seconds_before_scaledown"]) / 3600  # noqa: E731
    train_hours = tokens.processed / throughput / 3600
    step_hours = float(overhead["gpu_step_minutes"]) / 60
    cpu_steps = 5  # prep, validate x2, register, deploy: the steps on the CPU cluster
    cpu_hours = cpu_steps * float(overhead["cpu_step_minutes"]) / 60 + idle_hours(cpu)
    lines = [CostLine("training tokens", f"{tokens.processed:,} ({tokens.basis})", None)]
    if cluster is gpu:  # finetune and evaluate share the 1-GPU cluster
        gpu_hours = train_hours + len(GPU_STEPS) * step_hours + idle_hours(gpu)
        detail = f"{train_hours:.2f} h training at {throughput:,.0f} tokens/s (assumed) + {len(GPU_STEPS)} steps x "
    else:  # every node of the finetune step is billed for the whole step, then evaluate runs on the 1-GPU cluster
        node_hours = train_hours + step_hours + idle_hours(cluster)
        scaling = f" x {nodes} nodes x {efficiency:g} scaling (assumed)" if nodes > 1 else ""
        lines.append(
            CostLine(
                "finetune node time",
                f"{train_hours:.2f} h training at {per_node:,} tokens/s per node{scaling} = {throughput:,.0f} tokens/s "
                f"+ {overhead['gpu_step_minutes']} min overhead + idle; {nodes} x {node_hours:.2f} h x "
                f"${price(cluster['vm_size']):.3f}/h {cluster['vm_size']} ({nodes * gpus} GPUs)",
                nodes * node_hours * price(cluster["vm_size"]),
            )
        )
        gpu_hours = step_hours + idle_hours(gpu)
        detail = "evaluate: 1 step x "
    lines += [
        CostLine(
            "GPU node time",
            f"{detail}{overhead['gpu_step_minutes']} min overhead + idle; {gpu_hours:.2f} h x "
            f"${price(gpu['vm_size']):.3f}/h {gpu['vm_size']}",
            gpu_hours * price(gpu["vm_size"]),
        ),
        CostLine(
            "CPU node time",
            f"{cpu_steps} steps x {overhead['cpu_step_minutes']} min + idle; {cpu_hours:.2f} h x "
            f"${price(cpu['vm_size']):.3f}/h {cpu['vm_size']}",
            cpu_hours * price(cpu["vm_size"]),
        ),
    ]
    lines.append(CostLine("pipeline run", "total of the above", sum(line.usd or 0 for line in lines)))
    if _setting(settings, "deploy_endpoint", "target") == "azure":
        endpoint = compute["online_endpoint"]
        hourly = price(endpoint["instance_type"]) * int(endpoint["instance_count"])
        lines.append(
            CostLine(
                "endpoint, per hour",
                f"{endpoint['instance_count']} x {endpoint['instance_type']} while deployed "
                f"(${hourly * HOURS_PER_MONTH:,.0f} per {HOURS_PER_MONTH}-hour month; make teardown stops it)",
                hourly,
            )
        )
    return lines


# ---- the report -----------------------------------------------------------------------------------------------
@dataclass
class PreflightReport:
    ok: bool
    quota: list[QuotaRow] = field(default_factory=list)
    quota_note: str = ""
    needs: list[QuotaNeed] = field(default_factory=list)  # what the run holds at once, listed even unchecked
    cost: list[CostLine] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    pricing: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        out = ["Preflight", "  Quota (dedicated vCPUs)"]
        if self.quota:
            out.append(f"    {'VM family':<34} {'need':>6} {'available':>10} {'limit':>7}  status")
            for row in self.quota:
                available = "-" if row.available is None else str(row.available)
                limit = "-" if row.limit is None else str(row.limit)
                out.append(f"    {row.family:<34} {row.need:>6} {available:>10} {limit:>7}  {row.status}")
                out.extend(f"      {purpose}" for purpose in row.purposes)
        else:
            out.append(f"    not checked: {self.quota_note}; the run needs:")
            out.extend(f"      {need.purpose}: {need.nodes} x {need.vm_size}" for need in self.needs)
        if self.cost:
            source = self.pricing.get("prices", {})
            currency = self.pricing.get("currency", "USD")
            out.append(
                f"  Cost estimate ({currency}; list prices retrieved {source.get('retrieved')}; "
                "every assumption is in infra/pricing.json)"
            )
            for line in self.cost:
                usd = "" if line.usd is None else f"${line.usd:,.2f}"
                out.append(f"    {line.item:<20} {usd:>10}  {line.detail}")
        out.extend(f"  ERROR: {error}" for error in self.errors)
        return "\n".join(out)


def run_preflight(settings: RunSettings, data_plan=None, ml_client=None, options=None) -> PreflightReport:
    """Cost always; quota when a client is given (a dry run passes none). ``ok`` is False on any quota shortfall."""
    options = options or SubmitOptions()
    compute = load_compute()
    report = PreflightReport(ok=True, needs=quota_needs(settings, compute))
    try:
        report.pricing = load_pricing(options.pricing)
        local = data_plan.local_path if data_plan else local_data_path(settings)
        tokens = estimate_tokens(settings, local, report.pricing, options.tokens, options.data_report)
        report.cost = estimate_cost(settings, tokens, compute, report.pricing)
    except PreflightError as err:
        # The estimate is advice: say why it is missing, but do not block a submission on it.
        report.cost = [CostLine("cost", f"not estimated: {err}", None)]
    if ml_client is None:
        report.quota_note = "dry run (no workspace contacted)"
        return report
    from azure.core.exceptions import HttpResponseError

    try:
        report.quota, _ = check_quota(ml_client, report.needs)
    except HttpResponseError as err:  # includes ClientAuthenticationError (no az login, no identity)
        if err.status_code == 403:
            # Reading quota is a subscription-level permission a workspace-scoped identity may lack: say so, go on.
            report.quota_note = (
                "no permission to read quota (needs Microsoft.MachineLearningServices/locations/usages/read and "
                "vmSizes/read on the subscription); check it in Azure ML studio → Quota"
            )
            return report
        report.ok = False
        report.quota_note = "the quota check failed"
        report.errors.append(f"quota check failed: {err.message or err}")
        return report
    for row in report.quota:
        if not row.ok and not row.status.startswith(("no quota reported", "usage not reported")):
            report.ok = False
            report.errors.append(_quota_advice(row))
    return report


def _quota_advice(row: QuotaRow) -> str:
    if row.status.startswith("size not offered"):
        where = row.status.removeprefix("size not offered ")
        return f"{row.family} is not offered {where}: pick another size in infra/compute.json"
    free = f"limit {row.limit}" if row.available is None else f"{row.available} available of limit {row.limit}"
    return (
        f"{row.family}: {row.status} (need {row.need} vCPUs, {free}); "
        "request more in Azure ML studio → Quota (or the Azure portal → Quotas → Machine learning), or lower "
        "max_nodes / pick another size in infra/compute.json"
    )


# ---- CLI ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return azure_parser(__doc__).parse_args(argv)


def main(args: argparse.Namespace, ml_client=None) -> int:
    """make preflight; the exit codes of pipelines/azure/cli.py (3: a quota shortfall)."""
    return exit_code("preflight", _main, args, ml_client)


def _main(args: argparse.Namespace, ml_client) -> None:
    settings = azure_settings(args)
    options = SubmitOptions.from_args(args)
    if options.data:
        settings = with_local_data(settings, options.data)
    ml_client = None if args.dry_run else connect(ml_client)
    report = run_preflight(settings, None, ml_client=ml_client, options=options)
    print(report.text)
    if not report.ok:
        raise PreflightRefused("Preflight failed: the ERROR lines above say what to fix.")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
