"""Load on the local chat endpoint: latency, throughput and the server's overhead at concurrency 1 and 8.

    .venv/bin/python bench/bench_endpoint.py                      # 200 requests at each concurrency, own server
    .venv/bin/python bench/bench_endpoint.py --requests 20        # quick
    .venv/bin/python bench/bench_endpoint.py --url http://127.0.0.1:8890/score   # the endpoint `make run` left up

By default it starts its own server (``serve_local.py`` with ``score.py`` and ``serving.json`` from
components/deploy_endpoint, as deployed) on the packaged SmolLM2-135M-Instruct, converted once to
``$CHATFT_HOME/models/`` (the folder `make run` uses); ``--model_dir`` serves another Hugging Face folder. The
fine-tuned model has the same architecture and size, so it serves at the same speed; ``--url`` measures the live
endpoint instead.

Every request is the seed's payload (its question, ``temperature`` 0.7) with a fixed ``max_new_tokens``. For each
concurrency level, that many client threads (one HTTP keep-alive session each) send ``--requests`` requests in all,
in ``--rounds`` chunks that alternate between the levels (so a neighbour's load on a shared machine hits every
level alike), each after a short warm-up. Per request it records the client-side latency and what score.py reports
in its response headers: the duration of the generate() call the answer came from, the time it queued for a
batch, the batch size and the tokens generated. Server overhead = latency - generation time (HTTP, parsing, chat
template, queueing, decoding). Goals: 0 errors; overhead p50 <= 5% of latency p50; throughput at the highest
concurrency >= 3x the lowest. Absolute numbers on a shared machine are noisy; the ratios much less so.

Time to first token: after the main levels, ``--stream_requests`` more requests per level ask the same question
in the chat-completions shape with ``"stream": true``; the client times the first chunk with content (TTFT) and
the whole stream. These streamed requests count towards the error goal too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMPONENT = REPO / "components" / "deploy_endpoint"
QUESTION = "How do I restart my router?"  # the seed's example request
GOAL_OVERHEAD_SHARE = 0.05
GOAL_SPEEDUP = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads, one run each")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="the payload's fixed answer length limit")
    parser.add_argument("--rounds", type=int, default=5, help="chunks per level, alternating between the levels")
    parser.add_argument("--warmup", type=int, default=8, help="unmeasured requests before each chunk")
    parser.add_argument("--stream_requests", type=int, default=40, help="streamed requests per level (TTFT); 0: none")
    parser.add_argument("--url", help="benchmark this running endpoint instead of starting a server")
    parser.add_argument("--model_dir", type=Path, help="Hugging Face folder to serve (default: packaged SmolLM2)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return parser.parse_args(argv)


def payload(max_new_tokens: int) -> dict:
    return {
        "input_data": {
            "input_string": [{"role": "user", "content": QUESTION}],
            "parameters": {"temperature": 0.7, "max_new_tokens": max_new_tokens},
        }
    }


def stream_payload(max_new_tokens: int) -> dict:
    return {
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0.7,
        "max_tokens": max_new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def one_stream_request(session, url: str, body: bytes) -> dict:
    """A streamed request: time to the first chunk with content, time to the end, tokens from the usage chunk."""
    started = time.perf_counter()
    first = tokens = None
    try:
        with session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=300, stream=True) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
            done = False
            for line in r.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                event = json.loads(line[len(b"data: ") :])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                if first is None and any(c["delta"].get("content") for c in event.get("choices", [])):
                    first = time.perf_counter()
    except Exception as err:  # a refused or dropped connection is a benchmark error, reported, not raised
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    if not done:
        return {"ok": False, "error": "the stream ended without data: [DONE]"}
    latency_ms = (time.perf_counter() - started) * 1000
    ttft_ms = (first - started) * 1000 if first is not None else latency_ms  # a blank answer: first = last
    return {"ok": True, "latency_ms": latency_ms, "ttft_ms": ttft_ms, "tokens": tokens or 0}


def one_request(session, url: str, body: bytes) -> dict:
    started = time.perf_counter()
    try:
        response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=300)
    except Exception as err:  # a refused or dropped connection is a benchmark error, reported, not raised
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return {"ok": False, "error": f"HTTP {response.status_code}: {response.text[:200]}"}
    headers = response.headers
    if "x-chatft-generate-ms" not in headers:
        return {"ok": False, "error": "answer lacks score.py's x-chatft-* timing headers: is this a chatft endpoint?"}
    return {
        "ok": True,
        "latency_ms": latency_ms,
        "generate_ms": float(headers["x-chatft-generate-ms"]),
        "queue_ms": float(headers["x-chatft-queue-ms"]),
        "batch_size": int(headers["x-chatft-batch-size"]),
        "tokens": int(headers["x-chatft-completion-tokens"]),
    }


def run_level(url: str, concurrency: int, total: int, warmup: int, body: bytes, send=one_request) -> dict:
    """``concurrency`` threads send ``total`` requests between them; returns the per-request records and wall time."""
    import requests

    remaining = [total]
    lock = threading.Lock()
    records: list[dict] = []
    start_line = threading.Barrier(concurrency + 1)

    def client():
        with requests.Session() as session:
            for _ in range(max(1, warmup // concurrency)):
                send(session, url, body)
            start_line.wait()
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                record = send(session, url, body)
                with lock:
                    records.append(record)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_line.wait()  # every client has warmed up: the clock starts for all at once
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return {"records": records, "wall_s": time.perf_counter() - started}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(concurrency: int, run: dict) -> dict:
    ok = [r for r in run["records"] if r["ok"]]
    errors = [r["error"] for r in run["records"] if not r["ok"]]
    summary = {"concurrency": concurrency, "requests": len(run["records"]), "errors": len(errors)}
    summary["error_examples"] = sorted(set(errors))[:3]
    if not ok:
        return summary
    latency = [r["latency_ms"] for r in ok]
    overhead = [r["latency_ms"] - r["generate_ms"] for r in ok]
    summary.update(
        {
            "wall_s": run["wall_s"],
            "latency_p50_ms": percentile(latency, 50),
            "latency_p99_ms": percentile(latency, 99),
            "requests_per_s": len(ok) / run["wall_s"],
            "tokens_per_s": sum(r["tokens"] for r in ok) / run["wall_s"],
            "tokens_per_request": statistics.mean(r["tokens"] for r in ok),
            "generate_p50_ms": percentile([r["generate_ms"] for r in ok], 50),
            "overhead_p50_ms": percentile(overhead, 50),
            "queue_p50_ms": percentile([r["queue_ms"] for r in ok], 50),
            "other_overhead_p50_ms": percentile([o - r["queue_ms"] for o, r in zip(overhead, ok, strict=True)], 50),
            "mean_batch_size": statistics.mean(r["batch_size"] for r in ok),
        }
    )
    summary["overhead_share"] = summary["overhead_p50_ms"] / summary["latency_p50_ms"]
    return summary


def summarize_stream(concurrency: int, run: dict) -> dict:
    ok = [r for r in run["records"] if r["ok"]]
    errors = [r["error"] for r in run["records"] if not r["ok"]]
    summary = {"concurrency": concurrency, "requests": len(run["records"]), "errors": len(errors)}
    summary["error_examples"] = sorted(set(errors))[:3]
    if ok:
        summary.update(
            {
                "ttft_p50_ms": percentile([r["ttft_ms"] for r in ok], 50),
                "ttft_p95_ms": percentile([r["ttft_ms"] for r in ok], 95),
                "latency_p50_ms": percentile([r["latency_ms"] for r in ok], 50),
                "tokens_per_request": statistics.mean(r["tokens"] for r in ok),
            }
        )
    return summary


def goal_checks(levels: list[dict], streams: list[dict] | None = None) -> list[tuple[str, bool]]:
    errors = sum(s["errors"] for s in levels + (streams or []))
    checks = [(f"errors = 0 at every concurrency, streamed requests included ({errors})", errors == 0)]
    for s in levels:
        if "overhead_share" in s:
            share = s["overhead_share"]
            checks.append(
                (
                    f"overhead p50 <= {GOAL_OVERHEAD_SHARE:.0%} of latency p50 at concurrency {s['concurrency']} "
                    f"({s['overhead_p50_ms']:.0f} ms of {s['latency_p50_ms']:.0f} ms = {share:.1%})",
                    share <= GOAL_OVERHEAD_SHARE,
                )
            )
    low, high = levels[0], levels[-1]
    if len(levels) > 1 and "requests_per_s" in low and "requests_per_s" in high:
        speedup = high["requests_per_s"] / low["requests_per_s"]
        checks.append(
            (
                f"throughput at concurrency {high['concurrency']} >= {GOAL_SPEEDUP:.0f}x concurrency "
                f"{low['concurrency']} ({speedup:.2f}x requests/s; "
                f"{high['tokens_per_s'] / low['tokens_per_s']:.2f}x tokens/s)",
                speedup >= GOAL_SPEEDUP,
            )
        )
    return checks


def print_table(levels: list[dict]) -> None:
    columns = [
        ("conc", "concurrency", "{:d}"),
        ("reqs", "requests", "{:d}"),
        ("errors", "errors", "{:d}"),
        ("p50 ms", "latency_p50_ms", "{:.0f}"),
        ("p99 ms", "latency_p99_ms", "{:.0f}"),
        ("req/s", "requests_per_s", "{:.2f}"),
        ("tok/s", "tokens_per_s", "{:.1f}"),
        ("tok/req", "tokens_per_request", "{:.1f}"),
        ("gen p50", "generate_p50_ms", "{:.0f}"),
        ("ovh p50", "overhead_p50_ms", "{:.1f}"),
        ("queue", "queue_p50_ms", "{:.1f}"),
        ("other", "other_overhead_p50_ms", "{:.1f}"),
        ("ovh %", "overhead_share", "{:.1%}"),
        ("batch", "mean_batch_size", "{:.1f}"),
    ]
    rows = [[title for title, _, _ in columns]]
    for s in levels:
        rows.append([fmt.format(s[key]) if key in s else "-" for _, key, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def packaged_model() -> Path:
    from chatft.model_source import convert_packaged_smollm2

    target = Path(os.environ.get("CHATFT_HOME", REPO / "outputs")) / "models" / "SmolLM2-135M-Instruct"
    if not (target / "config.json").is_file():
        print(f"converting the packaged SmolLM2 to {target} (once) ...", flush=True)
        convert_packaged_smollm2(target)
    return target


def bench_streams(url: str, args: argparse.Namespace) -> list[dict]:
    """Time to first token: streamed requests at each concurrency, after the main levels."""
    body = json.dumps(stream_payload(args.max_new_tokens)).encode()
    streams = []
    for concurrency in args.concurrency:
        print(f"streaming: concurrency {concurrency}, {args.stream_requests} requests ...", flush=True)
        run = run_level(url, concurrency, args.stream_requests, args.warmup, body, send=one_stream_request)
        streams.append(summarize_stream(concurrency, run))
    return streams


def print_stream_table(streams: list[dict]) -> None:
    print("streamed (stream: true), client-side:")
    for s in streams:
        if "ttft_p50_ms" not in s:
            print(f"  concurrency {s['concurrency']}: {s['requests']} requests, {s['errors']} errors")
            continue
        print(
            f"  concurrency {s['concurrency']}: {s['requests']} requests, {s['errors']} errors; time to first token "
            f"p50 {s['ttft_p50_ms']:.0f} ms, p95 {s['ttft_p95_ms']:.0f} ms; whole stream p50 "
            f"{s['latency_p50_ms']:.0f} ms; {s['tokens_per_request']:.1f} tokens/request"
        )


def bench(url: str, args: argparse.Namespace) -> list[dict]:
    body = json.dumps(payload(args.max_new_tokens)).encode()
    runs = {concurrency: {"records": [], "wall_s": 0.0} for concurrency in args.concurrency}
    for number in range(args.rounds):
        # Round r sends its share of the requests; the shares add up to exactly --requests.
        share = args.requests * (number + 1) // args.rounds - args.requests * number // args.rounds
        for concurrency in args.concurrency:
            print(f"round {number + 1}/{args.rounds}: concurrency {concurrency}, {share} requests ...", flush=True)
            chunk = run_level(url, concurrency, share, args.warmup, body)
            runs[concurrency]["records"] += chunk["records"]
            runs[concurrency]["wall_s"] += chunk["wall_s"]
    return [summarize(concurrency, run) for concurrency, run in runs.items()]


def main(args: argparse.Namespace) -> int:
    settings = json.loads((COMPONENT / "serving.json").read_text(encoding="utf-8"))
    settings.pop("_notes", None)
    streams: list[dict] = []
    if args.url:
        where = args.url
        levels = bench(args.url, args)
        streams = bench_streams(args.url, args) if args.stream_requests else []
    else:
        model_dir = args.model_dir or packaged_model()
        where = f"own server on {model_dir}"
        with tempfile.TemporaryDirectory(prefix="bench_endpoint-") as tmp:
            env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HOME": tmp}  # HOME: gunicorn's ~/.gunicorn
            from chatft.serving.launch import running_server

            log = Path(tmp) / "server.log"
            with running_server(model_dir, log, code_dir=COMPONENT, env=env) as server:
                print(f"server healthy after {server['startup_s']:.1f} s at {server['url']}", flush=True)
                levels = bench(server["url"], args)
                streams = bench_streams(server["url"], args) if args.stream_requests else []
    print(f"\n{where}; payload: the seed's question, temperature 0.7, max_new_tokens {args.max_new_tokens}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; serving.json: {json.dumps(settings)}")
    print_table(levels)
    if streams:
        print_stream_table(streams)
    for s in levels + streams:
        for example in s["error_examples"]:
            print(f"  error at concurrency {s['concurrency']}: {example}")
    checks = goal_checks(levels, streams)
    for text, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    if args.json:
        results = {"where": where, "serving": settings, "levels": levels, "streams": streams}
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if args.strict and not all(passed for _, passed in checks) else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
