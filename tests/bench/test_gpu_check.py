"""bench/gpu_check.sh: its FLOP accounting on Phi-3-mini's real shape, and its tiny mode end to end on this CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
gpu_check = load_script("bench_gpu_check", REPO / "bench" / "gpu_check.py")


def test_flops_count_4n_per_token_plus_causal_attention_on_phi3_mini():
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    with torch.device("meta"):  # the real shape, no memory
        model = Phi3ForCausalLM(Phi3Config(**gpu_check.PHI3_MINI_SHAPE))
    shape = gpu_check.model_shape(SimpleNamespace(model=model))
    # Per layer: qkv 3072×9216 + o 3072×3072 + gate_up 3072×16384 + down 8192×3072; LM head 3072×32064.
    assert shape["body_params"] == 32 * (3072 * 9216 + 3072 * 3072 + 3072 * 16384 + 8192 * 3072) == 3_623_878_656
    assert shape["head_params"] == 3072 * 32064 and shape["attention_width"] == 3072 and shape["layers"] == 32
    # One 2048-token chat: 4 N per token, plus 12 L d per causal pair (2048 × 2049 / 2 pairs).
    step = {"real": 2048, "pairs": 2048 * 2049 // 2}
    per_token = gpu_check.step_flops(step, shape) / 2048
    assert per_token == pytest.approx(4 * 3_722_379_264 + 12 * 32 * 3072 * 2049 / 2)
    assert 16.0e9 < per_token < 16.2e9  # ~16.1 GFLOP per token (infra/pricing.json assumes ~17)


def test_peak_table_prefers_the_specific_name_and_unknown_gpus_need_an_override():
    assert gpu_check.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gpu_check.peak_flops("NVIDIA A100-SXM4-80GB", None) == 312e12
    assert gpu_check.peak_flops("Some New GPU", None) is None and gpu_check.peak_flops("x", 100.0) == 100e12


@pytest.mark.slow
def test_tiny_mode_runs_our_trainer_on_one_and_two_cpu_processes(tmp_path):
    out = tmp_path / "gpu_check"
    # A made-up 1 TFLOP/s "peak" exercises the MFU arithmetic (a CPU has no bf16 table entry).
    command = ["bash", str(REPO / "bench" / "gpu_check.sh"), "--tiny", f"--out={out}", "--peak-tflops=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    by_name = {(r["method"], r["processes"]): r for r in report["results"]}
    assert by_name[("qlora", 1)] == {"method": "qlora", "processes": 1, "skipped": "needs a CUDA GPU"}
    for processes in (1, 2):
        run = by_name[("lora", processes)]
        assert run["measured_steps"] == report["steps"] - report["warmup"] == 2
        # Packed, padding-free rows: each process fills at most batch × accum × seq tokens per step.
        assert 0.5 * processes * 2 * 128 <= run["tokens_per_step"] <= processes * 2 * 128
        assert run["tokens_per_second"] > 0 and run["peak_rss_gib"] > 0 and run["peak_memory_gib"] is None
        assert run["mfu"] == pytest.approx(run["flops_per_second"] / (1e12 * processes))
        assert run["flops_per_second"] > 4 * run["linear_params"] * run["tokens_per_second"]  # + attention
        ranks = sorted(p.name for p in (out / f"lora-{processes}").glob("rank_*.json"))
        assert ranks == [f"rank_{r}.json" for r in range(processes)]
    assert "| lora × 2 | cpu |" in result.stdout
