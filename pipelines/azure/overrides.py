"""A JSON file of assumptions (prices, throughput, regions) with an optional override file merged over it.

Used by preflight (infra/pricing.json) and the serverless path (infra/serverless_pricing.json): an override has the
same shape and any subset of the keys.
"""

from __future__ import annotations

import json
from pathlib import Path

from chatft.errors import UsageError


def merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``, key by key, nested dicts merged rather than replaced."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def load_json_with_override(path: Path, override: Path | None, error: type[UsageError] = UsageError) -> dict:
    """``path`` with ``override`` merged over it; an unreadable override raises ``error`` naming --pricing."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if override:
        try:
            data = merge(data, json.loads(Path(override).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            raise error(f"--pricing {override}: {err}") from None
    return data
