"""bench_finetune's comparison: tokens/s, speed-ups and FLOP-rate fractions from the runs' step records, printed.

The FLOP formulas are in bench/bench_finetune.py's docstring; this module only does the arithmetic and the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

GOALS = {"speedup": 3.0, "flop_fraction": 0.6, "best_gemm_fraction": 0.8}


def _measured(run: dict, warmup: int) -> list[dict]:
    steps = run["steps"][warmup:]
    if not steps:
        sys.exit("bench_finetune: no measured steps (the data ran out before the warm-up ended?)")
    return steps


def _totals(steps: list[dict]) -> dict:
    return {key: sum(s[key] for s in steps) for key in ("seconds", "cpu_seconds", "positions", "real", "labelled")}


def step_flops(step: dict, model: dict) -> dict:
    """FLOPs of one optimizer step of our run, by the formulas in the module docstring."""
    counted = {
        "body": 4 * model["body_params"] * step["real"],
        "head": 4 * model["head_params"] * step["labelled"],
        "adapters": 6 * model["adapter_params"] * step["real"],
        "attention": 3 * 4 * model["attention_width"] * model["layers"] * step["pairs"],
    }
    shorthand = 4 * (model["body_params"] + model["head_params"]) * step["real"] + counted["attention"]
    return {"counted": sum(counted.values()), "parts": counted, "shorthand": shorthand}


def compare(ours: dict, baselines: dict[str, dict], warmup: int) -> dict:
    mine = _measured(ours, warmup)
    a = _totals(mine)
    fractions, best_fractions, shorthand_fractions = [], [], []
    for step in mine:
        flops = step_flops(step, ours["model"])
        best = max(step["matmul_flops_after"], step["numpy_matmul_flops_after"])
        fractions.append(flops["counted"] / step["seconds"] / step["matmul_flops_after"])
        best_fractions.append(flops["counted"] / step["seconds"] / best)
        shorthand_fractions.append(flops["shorthand"] / step["seconds"] / step["matmul_flops_after"])
    probes = ours["matmul_flops_before"] + [s["matmul_flops_after"] for s in mine]
    numpy_probes = ours["numpy_matmul_flops_before"] + [s["numpy_matmul_flops_after"] for s in mine]
    counted = sum(step_flops(s, ours["model"])["counted"] for s in mine)
    result = {
        "ours_tokens_per_second": a["real"] / a["seconds"],
        "ours_real_token_fraction": a["real"] / a["positions"],
        "ours_labelled_fraction": a["labelled"] / a["real"],
        "ours_flops_per_second": counted / a["seconds"],
        "matmul_flops_per_second": statistics.median(probes),
        "numpy_matmul_flops_per_second": statistics.median(numpy_probes),
        "flop_fraction": statistics.median(fractions),
        "flop_fraction_per_step": fractions,
        "best_gemm_fraction": statistics.median(best_fractions),
        "flop_fraction_shorthand": statistics.median(shorthand_fractions),
        "bf16_matmul_flops_per_second": ours["bf16_matmul_flops"],
        "ours_tokens_per_step": a["real"] / len(mine),
        "measured_steps": len(mine),
    }
    for name, run in baselines.items():
        b = _totals(_measured(run, warmup))
        result[name] = {
            "tokens_per_second": b["real"] / b["seconds"],
            "tokens_per_step": b["real"] / len(_measured(run, warmup)),
            "real_token_fraction": b["real"] / b["positions"],
            "speedup": (a["real"] / a["seconds"]) / (b["real"] / b["seconds"]),
            "speedup_cpu_time": (a["real"] / a["cpu_seconds"]) / (b["real"] / b["cpu_seconds"]),
        }
    return result


LABELS = {"baseline": "TRL defaults", "tuned": "TRL tuned"}


def report(ours: dict, baselines: dict[str, dict], result: dict, args: argparse.Namespace) -> None:
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").is_file() else "?"
    print()
    print(f"same: model, data/sample, max length {ours['max_length']}, {ours['global_batch_rows']} rows per step")
    changed = f" with {', '.join(args.overrides)}" if args.overrides else ""
    print(f"ours: local.yaml's finetune section{changed}; precision used: {ours['precision']}")
    for name, run in baselines.items():
        note = ""
        if name == "baseline" and run["changed_from_defaults"].get("bf16") is False:
            note = " (runs in fp32: bf16 is emulated on this CPU or --baseline-precision fp32 was given)"
        print(f"{LABELS[name]}: {json.dumps(run['settings'])}{note}")
    print(f"baseline env: {args.baseline_env}")
    names = list(baselines)
    print(f"{'':<22}{'ours':>10}" + "".join(f"{LABELS[n]:>14}" for n in names))
    print(
        f"{'real tokens / s':<22}{result['ours_tokens_per_second']:>10.1f}"
        + "".join(f"{result[n]['tokens_per_second']:>14.1f}" for n in names)
    )
    print(
        f"{'real tokens / step':<22}{result['ours_tokens_per_step']:>10.0f}"
        + "".join(f"{result[n]['tokens_per_step']:>14.0f}" for n in names)
    )
    print(
        f"{'real-token fraction':<22}{result['ours_real_token_fraction']:>10.3f}"
        + "".join(f"{result[n]['real_token_fraction']:>14.3f}" for n in names)
    )
    for name in names:
        ok = "meets" if result[name]["speedup"] >= GOALS["speedup"] else "below"
        print(
            f"speed-up vs {LABELS[name]}: {result[name]['speedup']:.2f}x wall ({ok} the {GOALS['speedup']}x goal "
            f"set against TRL defaults), {result[name]['speedup_cpu_time']:.2f}x per CPU second"
        )
    print(
        f"our FLOP rate {result['ours_flops_per_second'] / 1e9:.1f} GFLOP/s; fp32 GEMM 2048^3: torch "
        f"{result['matmul_flops_per_second'] / 1e9:.1f}, numpy {result['numpy_matmul_flops_per_second'] / 1e9:.1f} "
        "GFLOP/s (medians of the probes)"
    )
    flop_ok = "meets" if result["flop_fraction"] >= GOALS["flop_fraction"] else "BELOW"
    best_ok = "meets" if result["best_gemm_fraction"] >= GOALS["best_gemm_fraction"] else "BELOW"
    print(
        f"FLOP-rate fraction: {result['flop_fraction']:.3f} of torch's fp32 GEMM ({flop_ok} {GOALS['flop_fraction']}); "
        f"{result['best_gemm_fraction']:.3f} of the best fp32 GEMM ({best_ok} {GOALS['best_gemm_fraction']}); "
        f"issue shorthand vs torch: {result['flop_fraction_shorthand']:.3f}"
    )
    if ours["precision"] == "bf16":
        bf16_fraction = (
            result["flop_fraction"] * result["matmul_flops_per_second"] / result["bf16_matmul_flops_per_second"]
        )
        print(
            f"our step multiplies in bf16: the bf16 matmul rate is {result['bf16_matmul_flops_per_second'] / 1e9:.1f} "
            f"GFLOP/s, and against it the fraction is about {bf16_fraction:.3f}"
        )
    print(f"load average at the end: {load} (other processes share the cores: timings are noisy)")
