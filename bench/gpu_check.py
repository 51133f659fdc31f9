"""GPU check: our finetune step's trainer on a Phi-3-mini-shaped model, for tokens/s, MFU and peak memory.

    bash bench/gpu_check.sh            # on a GPU machine: LoRA, QLoRA (where bitsandbytes loads), 2 GPUs (where 2)
    bash bench/gpu_check.sh --tiny     # the same path on a CPU with a tiny model, in about a minute

For a machine with no network that holds torch (CUDA), transformers, peft and accelerate; the pure-Python wheels it
lacks (trl, datasets, ...) are carried to it (bench/README.md). Nothing is downloaded: the model is a
``Phi3ForCausalLM`` with Phi-3-mini-4k's shape and random weights (throughput does not depend on the weights), the
tokenizer a small byte-level BPE built offline (tests/helpers/tiny_models.py; the model keeps Phi-3's 32,064-row
embedding and LM head, so the matrix work is Phi-3-mini's), the data synthetic chats packed into 2048-token rows.

Each configuration runs in fresh processes through the local backend's launcher (pipelines/local_backend.py, one
process per GPU with the torch.distributed environment Azure ML sets): finetune's build_trainer()
(chatft/training/trainer.py) with the flags below, trainer.train() for --steps optimizer steps, the first --warmup
not measured. A step is timed from on_step_begin to on_step_end with the GPU synchronised at both ends.

Accounting (matrix multiplies only; a multiply-add is 2 FLOPs), per optimizer step, per process:
    FLOPs = 4 × N × T  +  12 × L × d × P
  N: parameters of every linear layer including the LM head (not the embedding lookup): forward 2 N, the gradient
     with respect to the inputs 2 N; frozen weights (LoRA, QLoRA) get no weight gradient, hence 4 N, not 6 N;
  T: real tokens (packed rows are padding-free); L layers, d = heads × head_dim;
  P: causal query-key pairs, Σ over chats of n(n+1)/2 (attention stays within each chat of a packed row); scores
     and mixing are 2 matmuls of 2 FLOPs per pair and channel (4 d P per layer forward) and backward is twice that.
  LoRA's own matmuls (~0.5% here), element-wise work and the forward recomputed by activation checkpointing are
  not counted: this is MFU, not hardware utilisation.
MFU = FLOPs per second / (bf16 dense peak of the GPU × processes). Peaks are the vendors' dense (not sparse)
bf16 figures in PEAK_BF16_TFLOPS; another GPU needs --peak-tflops. Peak memory is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from bench.bench_finetune import model_shape

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets (the SXM parts unless the name says PCIe).
PEAK_BF16_TFLOPS = {
    "B200": 2250.0,
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}
PHI3_MINI_SHAPE = {  # microsoft/Phi-3-mini-4k-instruct config.json
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096,
}
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 512,
    "max_position_embeddings": 1024,
    "original_max_position_embeddings": 1024,
}
MODULES = ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "tokenizers", "safetensors", "yaml")
GOAL_MFU = 0.40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, short rows, on CPU: checks the path only")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check", help="work and result folder")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 8; tiny 3)")
    parser.add_argument("--warmup", type=int, help="first steps not measured (default 2; tiny 1)")
    parser.add_argument("--seq", type=int, help="packed row length (default 2048; tiny 128)")
    parser.add_argument("--batch", type=int, help="packed rows per forward pass (default 2; tiny 1)")
    parser.add_argument("--accum", type=int, help="forward passes per optimizer step (default 2)")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak per device, if not in the table")
    parser.add_argument("--budget-seconds", type=float, default=420, help="skip configurations that would start later")
    parser.add_argument("--only", choices=["lora", "qlora", "lora-2"], action="append", help="run only these")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one rank of one configuration
    args = parser.parse_args(argv)
    tiny = args.tiny
    for name, full, small in (("steps", 8, 3), ("warmup", 2, 1), ("seq", 2048, 128), ("batch", 2, 1), ("accum", 2, 2)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} leaves no measured step of --steps {args.steps}")
    return args


# ---- setup ------------------------------------------------------------------------------------------------------
def check_environment() -> dict:
    """Versions of what the check needs; a missing module is named with what to carry."""
    versions, missing = {}, []
    for name in MODULES:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        module = __import__(name)
        versions[name] = getattr(module, "__version__", "?")
    if missing:
        names = " ".join("pyyaml" if m == "yaml" else m for m in missing)
        sys.exit(
            f"gpu_check: missing {', '.join(missing)}. Carry the wheels (pure Python: "
            f"`pip download --no-deps {names} -d wheels/` on a networked machine, pinned as in constraints.txt), "
            f"then `pip install --no-index --no-deps wheels/*.whl` here"
        )
    import torch

    versions["python"] = platform.python_version()
    versions["cuda"] = torch.version.cuda
    versions["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    versions["bitsandbytes"] = _bitsandbytes_version()
    return versions


def _bitsandbytes_version() -> str | None:
    if importlib.util.find_spec("bitsandbytes") is None:
        return None
    try:
        import bitsandbytes

        return bitsandbytes.__version__
    except Exception as err:  # it imports but cannot load its CUDA library: say why, QLoRA is skipped
        return f"unusable: {type(err).__name__}: {err}"


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in PEAK_BF16_TFLOPS.items():  # most specific first (H100 PCIe before H100)
        if key in device_name:
            return tflops * 1e12
    return None


def build_model(folder: Path, tiny: bool) -> Path:
    """A Phi3ForCausalLM of Phi-3-mini's shape (or tiny) with random weights, saved with an offline tokenizer."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from tests.helpers.tiny_models import build_tokenizer

    marker = folder / "gpu_check_model.json"
    shape = TINY_SHAPE if tiny else PHI3_MINI_SHAPE
    if marker.is_file() and json.loads(marker.read_text()) == shape:
        return folder
    tokenizer = build_tokenizer("phi3")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = Phi3Config(**shape, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, **ids)
    config.dtype = "bfloat16" if not tiny else "float32"
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if tiny else torch.bfloat16)  # built in bf16: 7.6 GB, not 15
    try:
        with torch.device(device):
            model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.generation_config = GenerationConfig(**ids, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    marker.write_text(json.dumps(shape))
    print(f"gpu_check: built {params / 1e9:.2f}B-parameter model in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def build_data(folder: Path, tokens: int, tiny: bool) -> Path:
    """Synthetic multi-turn chats, about ``tokens`` tokens in all, lengths spread like real support chats."""
    from tests.helpers.chat_data import make_conversations

    words = sorted({w for c in make_conversations(300, seed=1) for m in c["messages"] for w in m["content"].split()})
    rng = random.Random(0)
    rows, total = [], 0
    scale = 3 if tiny else 60  # words per turn: scale × [1, 6] (half that for the user): ~800 tokens a chat
    while total < tokens:
        messages = [{"role": "system", "content": "You are a concise support assistant."}]
        for _ in range(rng.randint(1, 3)):
            for role in ("user", "assistant"):
                n = scale * rng.randint(1, 6) // (2 if role == "user" else 1)
                messages.append({"role": role, "content": " ".join(rng.choice(words) for _ in range(n))})
                total += int(n * 1.3)  # words → tokens, roughly, for this tokenizer
        rows.append(json.dumps({"messages": messages}))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


# ---- one rank of one configuration ------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import resource

    import torch
    from transformers import TrainerCallback

    from bench.bench_finetune import CountingCollator, finetune_args
    from chatft.training.outputs import precision_used
    from chatft.training.trainer import build_trainer

    method, _, processes = args.worker.partition(":")
    out = args.out / args.worker.replace(":", "-")
    rank = int(os.environ.get("RANK", "0"))
    trainer = build_trainer(finetune_args([f"--{k}={v}" for k, v in _finetune_flags(args, method, out).items()]))
    cuda = trainer.args.device.type == "cuda"
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    steps: list[dict] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args_, state, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            steps.append({"step": state.global_step, "seconds": time.perf_counter() - self.started, **counter.take()})

    trainer.add_callback(StepClock())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    result = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "method": method,
        "device": torch.cuda.get_device_name(trainer.args.device) if cuda else platform.processor() or "cpu",
        "precision": precision_used(trainer.args),
        "attention": model.config._attn_implementation,
        "activation_checkpointing": bool(
            getattr(trainer.args, "activation_checkpointing", False) or trainer.args.gradient_checkpointing
        ),
        "model": model_shape(trainer),
        "steps": steps,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / f"rank_{rank}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


def _finetune_flags(args: argparse.Namespace, method: str, out: Path) -> dict:
    """finetune's inputs for one configuration: the built model and data, no checkpoints or validation to time."""
    return {
        "base_model": args.out / "model",
        "train_data": args.out / "data",
        "method": method,
        "max_steps": args.steps,
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": args.accum,
        "max_seq_length": args.seq,
        "save_steps": 1_000_000,
        "eval_steps": 0,
        "lora_dropout": 0.0,
        "adapter": out / "adapter",
        "merged_model": out / "merged_model",
        "checkpoints": out / "checkpoints",
    }


# ---- orchestration ----------------------------------------------------------------------------------------------
def step_flops(step: dict, model: dict) -> float:
    """The module docstring's FLOPs of one step of one process: 4 N T + 12 L d P."""
    linear = model["body_params"] + model["head_params"]
    return 4 * linear * step["real"] + 12 * model["layers"] * model["attention_width"] * step["pairs"]


def summarise(ranks: list[dict], warmup: int, peak: float | None) -> dict:
    measured = [r["steps"][warmup:] for r in ranks]
    if not all(measured):
        raise RuntimeError(f"no measured step after {warmup} warm-up steps (the data ran out?)")
    seconds = sum(s["seconds"] for s in measured[0])  # the ranks step together (gradients are all-reduced)
    tokens = sum(s["real"] for steps in measured for s in steps)
    flops = sum(step_flops(s, ranks[0]["model"]) for steps in measured for s in steps)
    first = ranks[0]
    return {
        "method": first["method"],
        "processes": len(ranks),
        "device": first["device"],
        "precision": first["precision"],
        "attention": first["attention"],
        "activation_checkpointing": first["activation_checkpointing"],
        "measured_steps": len(measured[0]),
        "tokens_per_step": tokens / len(measured[0]),
        "tokens_per_second": tokens / seconds,
        "flops_per_second": flops / seconds,
        "mfu": flops / seconds / (peak * len(ranks)) if peak else None,
        "peak_memory_gib": max(r["peak_memory_bytes"] or 0 for r in ranks) / 2**30 or None,
        "peak_rss_gib": max(r["peak_rss_bytes"] for r in ranks) / 2**30,
        "linear_params": first["model"]["body_params"] + first["model"]["head_params"],
    }


def configurations(versions: dict, tiny: bool) -> list[tuple[str, int, str | None]]:
    """(method, processes, why skipped or None) for every configuration the machine allows."""
    gpus = len(versions["gpus"])
    if tiny:  # the CPU runs the 1- and 2-process paths; bitsandbytes' 4-bit kernels need CUDA
        return [("lora", 1, None), ("qlora", 1, "needs a CUDA GPU"), ("lora", 2, None)]
    if gpus == 0:
        sys.exit("gpu_check: no CUDA GPU visible (torch.cuda.device_count() == 0); use --tiny to check the path on CPU")
    bnb = versions["bitsandbytes"]
    qlora_skip = None if bnb and not bnb.startswith("unusable") else f"bitsandbytes {bnb or 'not installed'}"
    return [("lora", 1, None), ("qlora", 1, qlora_skip), ("lora", 2, None if gpus >= 2 else f"{gpus} GPU visible")]


def main(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    versions = check_environment()
    print(f"gpu_check: {json.dumps(versions)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    device = versions["gpus"][0] if versions["gpus"] else "cpu"
    peak = peak_flops(device, args.peak_tflops)
    build_model(args.out / "model", args.tiny)
    rows = args.steps * args.batch * args.accum * 2  # enough packed rows for 2 processes
    build_data(args.out / "data", int(rows * args.seq * 1.5), args.tiny)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for method, processes, skip in configurations(versions, args.tiny):
        name = f"{method}-{processes}" if processes > 1 else method
        if args.only and name not in args.only:
            continue
        if skip is None and time.perf_counter() - started > args.budget_seconds:
            skip = f"time budget of {args.budget_seconds:.0f} s spent"
        if skip:
            print(f"gpu_check: {name}: skipped ({skip})", flush=True)
            results.append({"method": method, "processes": processes, "skipped": skip})
            continue
        results.append(_run_configuration(args, method, processes, env, peak))
    report = {
        "tiny": args.tiny,
        "versions": versions,
        "peak_bf16_flops_per_device": peak,
        "shape": TINY_SHAPE if args.tiny else PHI3_MINI_SHAPE,
        "seq": args.seq,
        "batch": args.batch,
        "accum": args.accum,
        "steps": args.steps,
        "warmup": args.warmup,
        "results": results,
        "wall_seconds": time.perf_counter() - started,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print_table(report)
    return 1 if any("failed" in r for r in results) else 0


def _run_configuration(args: argparse.Namespace, method: str, processes: int, env: dict, peak: float | None) -> dict:
    """One configuration's ranks through the local backend's launcher; its summary, or why it failed."""
    from pipelines.local_backend import run_ranks

    name = f"{method}-{processes}" if processes > 1 else method
    folder = args.out / f"{method}-{processes}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("rank_*.json"):
        stale.unlink()
    command = [sys.executable, "-m", "bench.gpu_check", f"--worker={method}:{processes}", f"--out={args.out}"]
    command += [f"--{k}={getattr(args, k)}" for k in ("steps", "warmup", "seq", "batch", "accum")]
    command += ["--tiny"] if args.tiny else []
    print(f"gpu_check: {name}: {processes} process(es), log {folder / 'step.log'}", flush=True)
    code = run_ranks(" ".join(command), REPO, env, folder / "step.log", 1, processes, stream=False)
    if code != 0:
        tail = (folder / "step.log").read_text(errors="replace").splitlines()[-20:]
        print("\n".join(tail), flush=True)
        return {"method": method, "processes": processes, "failed": f"exit {code}"}
    ranks = [json.loads((folder / f"rank_{r}.json").read_text()) for r in range(processes)]
    return summarise(ranks, args.warmup, peak)


def print_table(report: dict) -> None:
    print(f"\n| config | device | tokens/s | MFU (goal LoRA >= {GOAL_MFU:.0%}) | peak memory | attention |")
    print("|---|---|---|---|---|---|")
    for r in report["results"]:
        name = f"{r['method']} × {r['processes']}"
        if "skipped" in r or "failed" in r:
            print(f"| {name} | | {r.get('skipped') or r.get('failed')} | | | |")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a (no peak known)"
        memory = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] else f"{r['peak_rss_gib']:.1f} GiB RSS"
        print(f"| {name} | {r['device']} | {r['tokens_per_second']:,.0f} | {mfu} | {memory} | {r['attention']} |")
    print(f"\ngpu_check: {report['wall_seconds']:.0f} s; details in gpu_check.json", flush=True)


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.worker:
        worker(parsed)
    else:
        sys.exit(main(parsed))
