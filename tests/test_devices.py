"""The one device and precision policy (src/chatft/devices.py).

What this machine can run is run for real; the other branches (no bf16 instructions, a CUDA GPU with and without
bf16, Apple's MPS, a CPU whose flags cannot be read) are reached by replacing the probe they ask, never the
policy itself."""

from __future__ import annotations

import pytest
import torch

from chatft import devices


@pytest.fixture(autouse=True)
def fresh_probe():
    devices.cpu_multiplies_bf16.cache_clear()
    yield
    devices.cpu_multiplies_bf16.cache_clear()


def _no_gpu(monkeypatch, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_this_machine_picks_its_own_device_and_a_precision_it_can_train_in():
    device = devices.pick_device()
    assert device == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")
    precision = devices.training_precision("auto", device)
    assert precision in ("bf16", "fp16", "fp32")
    # What auto picked really multiplies here (a tiny matmul in that dtype on that device).
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    a = torch.ones(8, 8, dtype=dtype, device=device)
    assert float((a @ a)[0, 0]) == 8.0
    assert devices.describe(device).startswith(device)


def test_the_cpu_flags_decide_bf16_on_linux(monkeypatch):
    _no_gpu(monkeypatch)
    zen4 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
    monkeypatch.setattr(devices, "_cpu_flags", lambda: zen4)
    assert devices.cpu_multiplies_bf16() and devices.training_precision("auto") == "bf16"
    devices.cpu_multiplies_bf16.cache_clear()
    # The laptop-class EPYC: AVX2, no AVX-512, no bf16 → fp32.
    monkeypatch.setattr(devices, "_cpu_flags", lambda: "flags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert not devices.cpu_multiplies_bf16() and devices.training_precision("auto") == "fp32"
    devices.cpu_multiplies_bf16.cache_clear()
    monkeypatch.setattr(devices, "_cpu_flags", lambda: "Features\t: fp asimd sve bf16 i8mm\n")  # Arm
    assert devices.cpu_multiplies_bf16()


def test_where_flags_are_unknown_a_timing_probe_decides(monkeypatch):
    _no_gpu(monkeypatch)
    monkeypatch.setattr(devices, "_cpu_flags", lambda: None)
    monkeypatch.setattr(devices, "_bf16_matmul_is_fast", lambda: False)
    assert devices.training_precision("auto") == "fp32"
    devices.cpu_multiplies_bf16.cache_clear()
    monkeypatch.setattr(devices, "_bf16_matmul_is_fast", lambda: True)
    assert devices.training_precision("auto") == "bf16"


def test_the_timing_probe_runs_here_and_agrees_with_the_flags_of_this_cpu():
    if devices._cpu_flags() is None:
        pytest.skip("no readable CPU flags to compare with")
    # Emulated bf16 is hundreds of times slower than fp32 and native bf16 faster, so the probe is not load-sensitive.
    assert devices._bf16_matmul_is_fast() == devices.cpu_multiplies_bf16()


def test_explicit_precisions_on_a_cpu(monkeypatch):
    _no_gpu(monkeypatch)
    assert devices.training_precision("fp32") == "fp32"
    assert devices.training_precision("bf16") == "bf16"  # asked for: honoured, even if emulated
    with pytest.raises(devices.PrecisionError, match="precision=fp16 needs a CUDA GPU; use fp32"):
        devices.training_precision("fp16")
    with pytest.raises(devices.PrecisionError, match="precision='fp8'; expected one of auto, bf16, fp16, fp32"):
        devices.training_precision("fp8")
    assert devices.inference_dtype() == "fp32"


def test_cuda_comes_first_and_uses_its_half_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert devices.pick_device() == "cuda"
    assert devices.training_precision("auto") == "bf16" and devices.inference_dtype() == "bf16"
    # A T4 or V100: torch would count emulated bf16 as supported; the policy asks for the hardware's.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert devices.training_precision("auto") == "fp16" and devices.inference_dtype() == "fp16"
    with pytest.raises(devices.PrecisionError, match="does not support bfloat16"):
        devices.training_precision("bf16")


def test_a_mac_uses_mps(monkeypatch):
    _no_gpu(monkeypatch, mps=True)
    assert devices.pick_device() == "mps"
    assert devices.training_precision("auto") == "fp32" and devices.inference_dtype() == "fp16"
    with pytest.raises(devices.PrecisionError, match="needs a CUDA GPU; use fp32 \\(or auto\\) on mps"):
        devices.training_precision("fp16")


def test_finetune_evaluate_and_serving_ask_this_module():
    """No second copy of the policy: training, evaluate and serving call chatft.devices and decide nothing themselves;
    finetune.py leaves both to chatft.training."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    asks = [
        repo / "src/chatft/training/trainer.py",
        repo / "src/chatft/training/config.py",
        repo / "components/evaluate/evaluate.py",
        repo / "src/chatft/serving/generation.py",
    ]
    for script in [*asks, repo / "components/finetune/finetune.py"]:
        text = script.read_text(encoding="utf-8")
        assert script not in asks or "chatft.devices" in text, script
        for copy in ("cuda.is_available()", "is_bf16_supported", "/proc/cpuinfo"):
            assert copy not in text, f"{script} decides the device itself ({copy})"
