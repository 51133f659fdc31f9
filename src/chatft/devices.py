"""Where a model runs and at what precision: the one policy finetune, evaluate and serving share.

- Device: CUDA when present, Apple Silicon's MPS on a Mac, the CPU otherwise.
- Training precision (``precision: auto``): bf16 on a GPU that supports it, else fp16; fp32 on MPS (mixed
  precision there is partial); on a CPU, bf16 autocast only where the CPU multiplies bf16 in hardware
  (AVX512-BF16, AMX, Arm BF16), fp32 elsewhere. Without those instructions bf16 is emulated: a 2048³ bf16 matmul
  ran at 0.1 GFLOP/s against 34 in fp32 on a 2-core AVX2 EPYC (PLATFORM_NOTES), while on a Zen 4 with AVX512-BF16
  a bf16-autocast training step ran ~1.4× faster than fp32 (bench/README.md).
- Inference (evaluate's scoring, the endpoint): the GPU's half precision (bf16, else fp16); fp16 on MPS; fp32 on
  a CPU, whatever its instructions: scores must not depend on which CPU computed them (a bf16 copy of the merged
  SmolLM2 scored validation perplexity 7.06 against 7.00 in fp32), and generation of a 135M model is
  memory-bound there, so half-width weights buy little.
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
from pathlib import Path

from chatft.errors import UsageError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_BF16_FLAGS = re.compile(r"\b(avx512_bf16|amx_bf16|bf16)\b")  # x86 AVX512-BF16 / AMX-BF16; Arm's "bf16" feature


class PrecisionError(UsageError, ValueError):
    """A precision this device cannot run; the message says what to use instead."""


def _cuda_has_bf16() -> bool:
    """bf16 in the GPU's hardware (A100, H100), not emulated (a T4): torch counts emulation unless told not to."""
    import torch

    return torch.cuda.is_bf16_supported(including_emulation=False)


def pick_device() -> str:
    """``cuda``, ``mps`` or ``cpu``: the first this machine has."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _cpu_flags() -> str | None:
    """The CPU's feature flags as text (Linux: /proc/cpuinfo; macOS: sysctl), or None where they cannot be read."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            done = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True)
        except OSError:
            return None
        return "bf16" if done.stdout.strip() == "1" else ""
    return None


def _bf16_matmul_is_fast(size: int = 256, repeats: int = 3) -> bool:
    """Timing probe where flags are unknown: a bf16 matmul at least half as fast as fp32 is done in hardware
    (emulated bf16 runs hundreds of times slower, so the margin is wide and load on the machine does not flip it)."""
    import time

    import torch

    def best(dtype) -> float:
        a, b = (torch.randn(size, size).to(dtype) for _ in range(2))
        torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - started)
        return min(times)

    return best(torch.bfloat16) <= 2 * best(torch.float32)


@functools.cache
def cpu_multiplies_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions: from its flags, else from a tiny timing probe."""
    flags = _cpu_flags()
    if flags is not None:
        return _BF16_FLAGS.search(flags) is not None
    return _bf16_matmul_is_fast()


def training_precision(requested: str = "auto", device: str | None = None) -> str:
    """The autocast precision fine-tuning uses on ``device``: ``bf16``, ``fp16`` or ``fp32``."""

    if requested not in PRECISIONS:
        raise PrecisionError(f"precision={requested!r}; expected one of {', '.join(PRECISIONS)}")
    device = device or pick_device()
    if device == "cuda":
        bf16_ok = _cuda_has_bf16()
        if requested == "bf16" and not bf16_ok:
            raise PrecisionError("precision=bf16: this GPU does not support bfloat16; use fp16 or auto")
        if requested == "auto":
            return "bf16" if bf16_ok else "fp16"
        return requested
    if requested == "fp16":
        raise PrecisionError(f"precision=fp16 needs a CUDA GPU; use fp32 (or auto) on {device}")
    if requested != "auto":
        return requested
    if device == "mps":
        return "fp32"
    return "bf16" if cpu_multiplies_bf16() else "fp32"


def inference_dtype(device: str | None = None) -> str:
    """The weights' dtype for scoring and serving on ``device`` (see the module docstring for why)."""

    device = device or pick_device()
    if device == "cuda":
        return "bf16" if _cuda_has_bf16() else "fp16"
    if device == "mps":
        return "fp16"
    return "fp32"


def describe(device: str | None = None) -> str:
    """One line for logs: the device, and on a CPU its vector ISA and whether it multiplies bf16."""
    import torch

    device = device or pick_device()
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    if device == "mps":
        return "mps (Apple GPU)"
    bf16 = "multiplies bf16" if cpu_multiplies_bf16() else "no bf16 instructions"
    return f"cpu ({torch.backends.cpu.get_cpu_capability()}, {bf16}, {torch.get_num_threads()} threads)"
