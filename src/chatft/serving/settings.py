"""serving.json: how the endpoint serves (workers, threads, batching, limits), checked once at start-up.

The file ships beside score.py (components/deploy_endpoint/serving.json); its ``_notes`` explain every value and
the arithmetic behind it. Unknown, missing or inconsistent keys are errors naming the file and the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# key: (type, lowest). Meanings and the arithmetic behind the values are in serving.json's "_notes".
SERVING_KEYS: dict[str, tuple[type, float]] = {
    "worker_count": (int, 1),
    "threads": (int, 1),
    "max_batch_size": (int, 1),
    "batch_wait_ms": (float, 0),
    "max_body_bytes": (int, 1024),
    "generation_timeout_s": (float, 1),
    "max_concurrent_requests_per_instance": (int, 1),
    "request_timeout_ms": (int, 1000),
}
_KIND = {float: "a number", int: "an integer"}


def load_serving_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check serving.json; a missing, unknown or inconsistent setting is an error naming the file and key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; serving.json ships beside score.py and must be staged with it") from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of settings")
    # "probes": Azure's health probes, read and checked by deploy_endpoint.py (the server never uses them);
    # "content_safety": checked by chatft.content_safety.
    unknown = sorted(set(raw) - set(SERVING_KEYS) - {"_notes", "probes", "content_safety"})
    missing = sorted(set(SERVING_KEYS) - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: unknown key(s) {unknown or '-'}, missing key(s) {missing or '-'}")
    settings = {}
    for key, (kind, lowest) in SERVING_KEYS.items():
        value = raw[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or value < lowest:
            raise ValueError(f"{path}: {key} must be {_KIND[kind]} >= {lowest}, got {json.dumps(value)}")
        settings[key] = value
    # The relations the numbers must keep (serving.json's "_notes" explain each).
    if settings["max_batch_size"] > settings["max_concurrent_requests_per_instance"]:
        raise ValueError(f"{path}: max_batch_size exceeds max_concurrent_requests_per_instance; a batch could not fill")
    if settings["threads"] <= settings["max_concurrent_requests_per_instance"]:
        raise ValueError(f"{path}: threads must exceed max_concurrent_requests_per_instance (a thread for GET /)")
    if settings["request_timeout_ms"] <= 2 * settings["generation_timeout_s"] * 1000:
        raise ValueError(f"{path}: request_timeout_ms must exceed 2 x generation_timeout_s (one batch ahead + its own)")
    return settings


def server_environment(settings: dict[str, Any]) -> dict[str, str]:
    """Environment variables that make azureml-inference-server-http serve with ``settings`` (from serving.json).

    WORKER_COUNT is the server's own; it passes no thread count to gunicorn, but gunicorn reads extra flags from
    GUNICORN_CMD_ARGS, and more than one thread switches its sync worker to the threaded one (gthread). The local
    launcher (serve_local.py) and an Azure deployment set the same variables, so both serve alike.
    """
    return {"WORKER_COUNT": str(settings["worker_count"]), "GUNICORN_CMD_ARGS": f"--threads {settings['threads']}"}
