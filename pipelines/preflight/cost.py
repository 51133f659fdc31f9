"""The cost estimate: training tokens / tokens per second x the training cluster's hourly price, plus per-step node
overhead on each cluster the built pipeline uses (its topology), plus the endpoint's hourly price while it is
deployed. Prices and tokens/s come from infra/pricing.json: assumptions with their source and date, never
measurements."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.preflight.inputs import PRICING_FILE, PreflightError, Topology, setting
from pipelines.preflight.tokens import TokenEstimate
from pipelines.settings import PROJECT_ROOT, RunSettings

HOURS_PER_MONTH = 730


@dataclass
class CostLine:
    item: str
    detail: str
    usd: float | None


def vm_price(pricing: dict, vm_size: str) -> float:
    prices = pricing["prices"]["vm_hourly"]
    if vm_size not in prices:
        raise PreflightError(
            f"no hourly price for {vm_size}: add it to prices.vm_hourly in "
            f"{PRICING_FILE.relative_to(PROJECT_ROOT)} or a --pricing file"
        )
    return float(prices[vm_size])


def idle_hours(cluster: dict) -> float:
    """A cluster bills its nodes until they scale down after the last step."""
    return float(cluster["idle_seconds_before_scaledown"]) / 3600


def training_throughput(cluster: dict, nodes: int, pricing: dict) -> tuple[float, float, float]:
    """(tokens/s per node, scaling efficiency, tokens/s of all nodes) assumed for the training cluster."""
    per_node = pricing["throughput"]["training_tokens_per_second"].get(cluster["vm_size"])
    if not per_node:
        raise PreflightError(
            f"no training tokens/s assumed for {cluster['vm_size']}: add it to throughput in pricing.json"
        )
    # Several nodes: each adds its tokens/s times the assumed scaling efficiency (gradients cross the network).
    efficiency = float(pricing["throughput"].get("multi_node_efficiency", 1.0)) if nodes > 1 else 1.0
    return float(per_node), efficiency, float(per_node) * nodes * efficiency


def _cluster_line(item: str, detail: str, hours: float, cluster: dict, pricing: dict) -> CostLine:
    price = vm_price(pricing, cluster["vm_size"])
    return CostLine(item, f"{detail}; {hours:.2f} h x ${price:.3f}/h {cluster['vm_size']}", hours * price)


def _training_node_line(training: dict, nodes: int, train_hours: float, pricing: dict) -> CostLine:
    """A separate training cluster: every node of the finetune step is billed for the whole step."""
    per_node, efficiency, throughput = training_throughput(training, nodes, pricing)
    minutes = pricing["overhead"]["gpu_step_minutes"]
    node_hours = train_hours + float(minutes) / 60 + idle_hours(training)
    price = vm_price(pricing, training["vm_size"])
    scaling = f" x {nodes} nodes x {efficiency:g} scaling (assumed)" if nodes > 1 else ""
    gpus = nodes * int(training.get("gpus_per_node", 1))
    return CostLine(
        "finetune node time",
        f"{train_hours:.2f} h training at {per_node:,} tokens/s per node{scaling} = {throughput:,.0f} tokens/s "
        f"+ {minutes} min overhead + idle; {nodes} x {node_hours:.2f} h x ${price:.3f}/h {training['vm_size']} "
        f"({gpus} GPUs)",
        nodes * node_hours * price,
    )


def estimate_cost(
    settings: RunSettings, tokens: TokenEstimate, compute: dict, pricing: dict, topology: Topology
) -> list[CostLine]:
    gpu, cpu = compute["gpu_cluster"], compute["cpu_cluster"]
    clusters = {entry["name"]: entry for entry in compute.values() if isinstance(entry, dict) and "vm_size" in entry}
    if topology.training not in clusters:
        raise PreflightError(f"finetune runs on {topology.training}, which infra/compute.json does not list")
    training, nodes = clusters[topology.training], topology.training_nodes
    throughput = training_throughput(training, nodes, pricing)[2]
    overhead = pricing["overhead"]
    train_hours = tokens.processed / throughput / 3600
    step_hours = float(overhead["gpu_step_minutes"]) / 60
    gpu_steps, cpu_steps = topology.on(gpu), topology.on(cpu)
    lines = [CostLine("training tokens", f"{tokens.processed:,} ({tokens.basis})", None)]
    if training is gpu:  # finetune shares the 1-GPU cluster with the other GPU steps
        gpu_hours = train_hours + len(gpu_steps) * step_hours + idle_hours(gpu)
        detail = f"{train_hours:.2f} h training at {throughput:,.0f} tokens/s (assumed) + {len(gpu_steps)} steps x "
    else:
        lines.append(_training_node_line(training, nodes, train_hours, pricing))
        gpu_hours = len(gpu_steps) * step_hours + idle_hours(gpu)
        detail = f"{', '.join(gpu_steps)}: {len(gpu_steps)} step(s) x "
    cpu_hours = len(cpu_steps) * float(overhead["cpu_step_minutes"]) / 60 + idle_hours(cpu)
    lines += [
        _cluster_line(
            "GPU node time", f"{detail}{overhead['gpu_step_minutes']} min overhead + idle", gpu_hours, gpu, pricing
        ),
        _cluster_line(
            "CPU node time",
            f"{len(cpu_steps)} steps ({', '.join(sorted(set(cpu_steps)))}) x {overhead['cpu_step_minutes']} min + idle",
            cpu_hours,
            cpu,
            pricing,
        ),
    ]
    lines.append(CostLine("pipeline run", "total of the above", sum(line.usd or 0 for line in lines)))
    if setting(settings, "deploy_endpoint", "target") == "azure":
        lines.append(endpoint_line(compute["online_endpoint"], pricing))
    return lines


def endpoint_line(endpoint: dict, pricing: dict) -> CostLine:
    hourly = vm_price(pricing, endpoint["instance_type"]) * int(endpoint["instance_count"])
    return CostLine(
        "endpoint, per hour",
        f"{endpoint['instance_count']} x {endpoint['instance_type']} while deployed "
        f"(${hourly * HOURS_PER_MONTH:,.0f} per {HOURS_PER_MONTH}-hour month; make teardown stops it)",
        hourly,
    )
