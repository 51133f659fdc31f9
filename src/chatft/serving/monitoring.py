"""How the endpoint is doing: one JSON line per request, and a summary of the last N.

Each request's record::

    {"time": "2026-12-01T21:30:00.123Z", "route": "/score", "status": 200, "latency_ms": 812.4,
     "first_token_ms": null, "prompt_tokens": 31, "completion_tokens": 24, "finish_reason": "stop",
     "stream": false, "batch_size": 3, "blocked": null, "error": null}

``blocked`` is the category of a request refused for its content (a screening hook's ``RequestError.category``),
``error`` the message of any other refusal. Message content and answers are recorded only when
``CHATFT_LOG_CONTENT=1``. Records go to the server log (logger ``azmlinfsrv.chatft.requests``, which reaches
Application Insights on Azure ML when the deployment enables it) and, when ``CHATFT_REQUEST_LOG`` names a file,
to that JSONL file too (a local slot's ``requests.jsonl``; rotated to ``.1`` past ``MAX_LOG_BYTES``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_ENV, CONTENT_ENV = "CHATFT_REQUEST_LOG", "CHATFT_LOG_CONTENT"
MAX_LOG_BYTES = 50 * 1024 * 1024  # ~150k records; the previous file is kept as requests.jsonl.1
logger = logging.getLogger("azmlinfsrv.chatft.requests")


class RequestLog:
    """Writes one record per request; safe to call from every request thread."""

    def __init__(self, path: str | os.PathLike | None = None, log_content: bool | None = None):
        path = path if path is not None else os.environ.get(LOG_ENV)
        self.path = Path(path) if path else None
        self.log_content = log_content if log_content is not None else os.environ.get(CONTENT_ENV) == "1"
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        *,
        route: str,
        status: int,
        started: float,
        completion=None,
        stream: bool = False,
        blocked: str | None = None,
        error: str | None = None,
        messages: list[dict] | None = None,
    ) -> dict[str, Any]:
        """Log one finished request (``started``: its perf_counter at arrival); returns the record."""
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "route": route,
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "first_token_ms": None,
            "prompt_tokens": None,
            "completion_tokens": None,
            "finish_reason": None,
            "stream": stream,
            "batch_size": None,
            "blocked": blocked,
            "error": error,
        }
        if completion is not None:
            first = completion.first_token_ms
            entry.update(
                {
                    "first_token_ms": None if first is None else round(first, 1),
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "finish_reason": completion.finish_reason,
                    "batch_size": completion.batch_size,
                }
            )
        if self.log_content:
            entry["messages"] = messages
            entry["output"] = completion.text if completion is not None else None
        line = json.dumps(entry)
        logger.info(line)
        if self.path:
            with self._lock:
                try:
                    if self.path.stat().st_size > MAX_LOG_BYTES:
                        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                except FileNotFoundError:
                    pass
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
        return entry


def read_last(path: Path, count: int) -> list[dict]:
    """The last ``count`` records of a request log (a torn last line, mid-write, is skipped)."""
    records: deque = deque(maxlen=count)
    try:
        with Path(path).open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        return []
    return list(records)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(records: list[dict]) -> dict[str, Any]:
    """p50/p95 latency and time to first token, tokens/s, error and block rates of ``records``.

    tokens/s is per answered request (completion tokens / its latency), p50: what one client sees, independent of
    idle time between requests. Error rate: refusals (4xx, not blocked) and failures (5xx) over all requests.
    """
    answered = [r for r in records if r.get("status") == 200]
    latency = [r["latency_ms"] for r in answered if r.get("latency_ms") is not None]
    first = [r["first_token_ms"] for r in answered if r.get("first_token_ms") is not None]
    speeds = [
        r["completion_tokens"] / (r["latency_ms"] / 1000)
        for r in answered
        if r.get("completion_tokens") and r.get("latency_ms")
    ]
    blocked = sum(1 for r in records if r.get("blocked"))
    errors = sum(1 for r in records if r.get("status", 0) >= 400 and not r.get("blocked"))
    total = len(records)
    return {
        "requests": total,
        "latency_p50_ms": _percentile(latency, 50),
        "latency_p95_ms": _percentile(latency, 95),
        "first_token_p50_ms": _percentile(first, 50),
        "tokens_per_s_p50": _percentile(speeds, 50),
        "error_rate": errors / total if total else None,
        "server_errors": sum(1 for r in records if r.get("status", 0) >= 500),
        "block_rate": blocked / total if total else None,
        "since": records[0].get("time") if records else None,
    }


def format_summary(name: str, summary: dict[str, Any]) -> str:
    """One line for ``make status`` / ``make monitor``."""

    def show(key: str, fmt: str) -> str:
        return "-" if summary.get(key) is None else fmt.format(summary[key])

    if not summary["requests"]:
        return f"{name}: no requests recorded yet"
    return (
        f"{name}: last {summary['requests']} requests since {summary['since']}: "
        f"p50 {show('latency_p50_ms', '{:.0f}')} ms, p95 {show('latency_p95_ms', '{:.0f}')} ms, "
        f"first token p50 {show('first_token_p50_ms', '{:.0f}')} ms, {show('tokens_per_s_p50', '{:.1f}')} tokens/s, "
        f"errors {show('error_rate', '{:.1%}')} ({summary['server_errors']} 5xx), "
        f"blocked {show('block_rate', '{:.1%}')}"
    )
