"""fp32 GEMM rates on this machine: torch (MKL in its CPU wheel) against numpy (OpenBLAS in its wheel).

    .venv/bin/python bench/bench_gemm.py              # 2048³ and the shapes of a SmolLM2 step (320-token rows)
    .venv/bin/python bench/bench_gemm.py --threads 1

The "best fp32 GEMM" that bench_finetune.py's FLOP fraction is compared against is the better of the two.
Each rate is the median of the calls made in --seconds of measuring (at least --repeats of them), after a tenth
of that spent warming up: a small shape takes well under a millisecond, and a handful of calls right after a
large one measured its thread pool waking up (84 GFLOP/s instead of 199 on Zen 5).
"""

from __future__ import annotations

import argparse
import statistics
import time

# (M, K, N): 2048³, then SmolLM2-135M's projections on a 320-token row: MLP up/gate, MLP down, q/o, LM head.
SHAPES = [(2048, 2048, 2048), (320, 576, 1536), (320, 1536, 576), (320, 576, 576), (320, 576, 49152)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=5, help="at least this many measured calls per shape")
    parser.add_argument("--seconds", type=float, default=0.5, help="measuring time per shape and library")
    return parser.parse_args(argv)


def rate(call, flops: int, repeats: int, budget_s: float) -> float:
    warm_until = time.perf_counter() + budget_s / 10
    call()
    while time.perf_counter() < warm_until:
        call()
    seconds: list[float] = []
    stop = time.perf_counter() + budget_s
    while len(seconds) < repeats or time.perf_counter() < stop:
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return flops / statistics.median(seconds) / 1e9


def main(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from pathlib import Path

    loadavg = Path("/proc/loadavg")
    load = loadavg.read_text().split()[0] if loadavg.is_file() else "?"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'M x K x N':<22}{'torch GFLOP/s':>15}{'numpy GFLOP/s':>15}{'numpy/torch':>13}")
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k)
        xn, wn = x.numpy(), w.numpy().T  # numpy multiplies the transposed view without copying it
        flops = 2 * m * k * n
        ours = rate(lambda x=x, w=w: torch.nn.functional.linear(x, w), flops, args.repeats, args.seconds)
        theirs = rate(lambda xn=xn, wn=wn: xn @ wn, flops, args.repeats, args.seconds)
        print(f"{f'{m} x {k} x {n}':<22}{ours:>15.1f}{theirs:>15.1f}{theirs / ours:>13.2f}")
    print(f"load average before: {load} (other processes share the cores: re-run on a quiet machine)")


if __name__ == "__main__":
    main(parse_args())
