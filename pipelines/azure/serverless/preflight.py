"""Step 2 of the serverless path against the workspace: the region the model's fine-tuning is offered in, the
marketplace subscription, and a cost estimate (no GPU quota: the service trains on its own capacity)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.azure.assets import get_or_none
from pipelines.azure.overrides import load_json_with_override
from pipelines.azure.serverless.data import ValidatedData
from pipelines.azure.serverless.settings import (
    PRICING_FILE,
    REGIONS_FILE,
    REGIONS_TAG,
    ServerlessError,
    ServerlessSettings,
    base_model_version,
)
from pipelines.settings import PROJECT_ROOT, RunSettings, SettingsError


def load_pricing(override: Path | None = None) -> dict:
    """infra/serverless_pricing.json with an optional --pricing file merged over it."""
    return load_json_with_override(PRICING_FILE, override, SettingsError)


def normalize_region(region: str) -> str:
    return region.replace(" ", "").lower()


def offered_regions(settings: RunSettings, registry_client=None) -> tuple[list[str], str]:
    """(regions, where the list came from): the model's catalog tag when the SDK can read it, else the file."""
    registry, name, version = base_model_version(settings.base_model)
    if registry_client is not None:
        model = registry_client.models.get(name=name, version=version)
        tag = (model.tags or {}).get(REGIONS_TAG)
        if tag:
            # The tag is a list as text; accept "a,b", "a, b" and '["a","b"]'.
            regions = [normalize_region(r) for r in re.split(r"[\s,\[\]\"']+", tag) if r]
            return regions, f"catalog tag {REGIONS_TAG} of {name}:{version} in registry {registry}"
    table = json.loads(REGIONS_FILE.read_text(encoding="utf-8"))
    regions = table["regions"].get(name)
    if regions is None:
        raise ServerlessError(
            f"{REGIONS_FILE.relative_to(PROJECT_ROOT)} does not list {name}, and its catalog entry names no regions: "
            f"add it there from the model's catalog page"
        )
    return [normalize_region(r) for r in regions], f"{REGIONS_FILE.relative_to(PROJECT_ROOT)} ({table['retrieved']})"


@dataclass
class CostEstimate:
    lines: list[str]
    training_tokens: int


def estimate_tokens(path: Path, assumptions: dict) -> int:
    """Content characters / chars_per_token + template tokens per message, over one file (no tokenizer needed)."""
    total = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            messages = json.loads(line)["messages"]
            chars = sum(len(m.get("content") or "") for m in messages)
            total += math.ceil(chars / float(assumptions["chars_per_token"]))
            total += int(assumptions["template_tokens_per_message"]) * len(messages)
    return total


def estimate_cost(serverless: ServerlessSettings, data: ValidatedData, pricing: dict) -> CostEstimate:
    prices, usage = pricing["prices"], pricing["usage"]
    per_epoch = estimate_tokens(data.train.path, pricing["tokens"])
    tokens = per_epoch * serverless.epochs
    lines = [
        f"training tokens ≈ {tokens:,} ({per_epoch:,} per epoch × {serverless.epochs} epoch(s); characters / "
        f"{pricing['tokens']['chars_per_token']:g} + template tokens, an estimate)"
    ]

    def cost(label: str, price_key: str, amount: float, unit: str) -> float | None:
        price = prices.get(price_key)
        if price is None:
            lines.append(f"{label}: price unknown ({price_key} is null in the pricing file: fill it in)")
            return None
        value = price * amount
        lines.append(f"{label}: {amount:,.1f} {unit} × {price:g} = {value:,.2f} {pricing['currency']}")
        return value

    requests = usage["requests"]
    parts = [
        cost("training", "training_per_1k_tokens", tokens / 1000, "k tokens"),
        cost("hosting", "hosting_per_hour", usage["hosting_hours"], "h deployed"),
        cost("inference in", "input_per_1k_tokens", requests * usage["input_tokens_per_request"] / 1000, "k tokens"),
        cost("inference out", "output_per_1k_tokens", requests * usage["output_tokens_per_request"] / 1000, "k tokens"),
    ]
    if all(p is not None for p in parts):
        lines.append(f"total ≈ {sum(parts):,.2f} {pricing['currency']} (assumptions: {PRICING_FILE.name})")
    else:
        lines.append(f"total: not estimated, some prices are unknown (source: {prices['_source'][:90]}...)")
    return CostEstimate(lines, tokens)


@dataclass
class Preflight:
    ok: bool
    lines: list[str]
    region: str | None = None
    subscription_missing: bool = False

    @property
    def text(self) -> str:
        return "\n".join(["Preflight (serverless):", *[f"  {line}" for line in self.lines]])


def run_preflight(
    settings: RunSettings,
    serverless: ServerlessSettings,
    data: ValidatedData,
    pricing: dict,
    ml_client=None,
    registry_client=None,
) -> Preflight:
    """Region, subscription, cost. Offline (no client) it checks what it can and says what it could not."""
    lines = ["GPU quota: none needed; the service fine-tunes and serves on its own capacity (no cluster is used)"]
    ok = True
    regions, source = offered_regions(settings, registry_client)
    region = None
    if ml_client is None:
        lines.append(
            f"region: not checked offline; {settings.base_model_name} fine-tuning is offered in "
            f"{', '.join(regions)} ({source})"
        )
    else:
        region = normalize_region(ml_client.workspaces.get(ml_client.workspace_name).location)
        if region in regions:
            lines.append(
                f"region: workspace in {region}, where {settings.base_model_name} fine-tuning is offered ({source})"
            )
        else:
            ok = False
            lines.append(
                f"region: FAILED: the workspace is in {region}, but serverless fine-tuning of "
                f"{settings.base_model_name} is offered only in {', '.join(regions)} ({source}); create a workspace "
                "there (make infra with location set) or pick a model offered here"
            )
    missing = False
    if not serverless.marketplace_subscription:
        lines.append(f"marketplace subscription: not needed ({settings.base_model_name} is a Microsoft offer)")
    elif ml_client is None:
        lines.append(f"marketplace subscription: {serverless.subscription_name} not checked offline")
    else:
        existing = get_or_none(ml_client.marketplace_subscriptions, serverless.subscription_name)
        missing = existing is None
        state = "missing: created after training, before the endpoint" if missing else f"exists ({existing.status})"
        lines.append(f"marketplace subscription: {serverless.subscription_name} {state}")
    lines += [
        "cost (assumptions, not measured):",
        *[f"  {line}" for line in estimate_cost(serverless, data, pricing).lines],
    ]
    return Preflight(ok, lines, region, missing)
