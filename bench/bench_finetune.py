"""Fine-tuning throughput: our finetune step against a plain TRL SFTTrainer, and our share of the machine's FLOPs.

    .venv/bin/python -m bench.bench_finetune                 # 1 warm-up + 4 measured optimizer steps per run
    .venv/bin/python -m bench.bench_finetune --steps 8 --json outputs/bench/finetune.json

Run it as a module from the repository root (it imports ``pipelines`` for the preset and the base model).

One script run, one machine, the same model (SmolLM2-135M-Instruct, converted once from the packaged GGUF like
`make run` does), the same data (data/sample), the same sequence length and the same global batch size:

- ours: finetune's own build_trainer() (chatft/training/trainer.py) with the finetune settings of
  pipelines/config/local.yaml, in the environment the local backend gives a step (its malloc tunables);
- baseline ("TRL defaults"): `SFTTrainer(model=path, args=SFTConfig(output_dir, use_cpu=True, max_length,
  max_steps), train_dataset, peft_config=LoRA)`: TRL's defaults (8 padded rows per device, 1 accumulation step,
  bf16 autocast, gradient checkpointing, loss on every token) with only what the CPU forces (use_cpu=True), the
  shared sequence length, and a step bound. Where the CPU has no bf16 instructions, bf16 is emulated (a 2048³
  matmul at 0.1 GFLOP/s on an AVX2 EPYC: 5 steps did not finish in 25 minutes), so there the baseline runs in
  fp32 (bf16=False) and the report says so; --baseline-precision forces either. It trains the same LoRA adapter
  (rank, alpha and target modules as ours, PEFT's defaults otherwise) and runs in a plain environment.
- tuned ("TRL tuned"): the same, plus what a user who read TRL's docs would set on a CPU: fp32, no gradient
  checkpointing, packing=True (best-fit, padding-free) and assistant_only_loss=True (with our training chat
  template, which adds the {% generation %} markers TRL needs).

Both global batches are 8 rows (8 × 1 accumulation vs 1 × 8); each run is a fresh process. Per optimizer step,
from on_step_begin to on_step_end (data loading, logging and checkpoints fall outside), the script records wall
and CPU seconds and, from the collated batches, the positions the model computes, the real (non-padding) tokens,
the tokens with a label, and each chat's length.

FLOPs counted for our step (matrix multiplies only; a fused multiply-add is 2 FLOPs):
- base linear layers of the decoder: 4 × their parameters × real tokens (forward 2, input gradient 2; frozen
  weights get no weight gradient);
- LM head: 4 × its parameters × labelled tokens (our step projects only positions that have a label);
- LoRA A/B: 6 × adapter parameters × real tokens (forward, input gradient, weight gradient);
- attention scores and mixing: 3 × 4 × (heads × head_dim) × layers × Σ over chats of L(L+1)/2 (causal pairs within
  each chat; backward = 2 × forward). Element-wise work (norms, activations, softmax) is not counted.
The issue's shorthand (4 × all matmul parameters × real tokens + attention) is printed too.

The machine's fp32 matmul rate is measured in our run's process with 2048 × 2048 `torch.matmul`s (median of 3)
before training and after every optimizer step; the FLOP-rate fraction is each measured step's rate over the
probe that follows it, and the median over steps is reported, so slow drifts in machine load cancel out. numpy's
BLAS (OpenBLAS in its wheel) is probed the same way: on AMD CPUs torch's MKL can run at half its rate, and the
fraction against the better of the two ("best fp32 GEMM") is printed too. Where
our step runs in bf16 (precision auto on a CPU with bf16 instructions), the bf16 matmul rate is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.finetune_report import compare, report

REPO = Path(__file__).resolve().parents[1]
LOCAL_PRESET = REPO / "pipelines" / "config" / "local.yaml"
FINETUNE_SPEC = REPO / "components" / "finetune" / "component.yml"
PROBE_SIZE = 2048
TRL_DEFAULT_ROWS = 8  # SFTConfig's per_device_train_batch_size default, × 1 accumulation step
BASELINES = ("baseline", "tuned")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per run (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="optimizer steps run first and not measured")
    parser.add_argument("--output-root", default="outputs", help="where the converted model is cached (as make run)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--baseline-env",
        choices=["plain", "same"],
        default="plain",
        help="plain: the baseline runs without the local backend's malloc tunables; same: with them",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="INPUT=VALUE",
        help="change one finetune input of our run, e.g. --set precision=fp32 (the baseline is unchanged)",
    )
    parser.add_argument(
        "--baseline-precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="TRL defaults' precision: auto = its bf16 default where the CPU multiplies bf16, else fp32",
    )
    parser.add_argument("--skip-tuned", action="store_true", help="run only the TRL-defaults baseline")
    parser.add_argument("--worker", choices=["ours", *BASELINES], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- shared by both workers -----------------------------------------------------------------------------------
def _chat_lengths(batch) -> list[int]:
    """Token count of each chat in a collated batch: padding-free rows restart positions per chat."""
    if "attention_mask" in batch:
        return [int(n) for n in batch["attention_mask"].sum(dim=1)]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["position_ids"].shape[1]]
    return [b - a for a, b in zip(starts, starts[1:], strict=False)]


class CountingCollator:
    """Wraps a trainer's collator; counts what each batch makes the model compute."""

    def __init__(self, collate):
        self.collate = collate
        self.reset()

    def reset(self) -> None:
        self.positions = self.real = self.labelled = self.pairs = self.chats = 0

    def __call__(self, examples):
        batch = self.collate(examples)
        lengths = _chat_lengths(batch)
        self.positions += batch["input_ids"].numel()
        self.real += sum(lengths)
        self.labelled += int((batch["labels"][:, 1:] != -100).sum())
        self.pairs += sum(n * (n + 1) // 2 for n in lengths)
        self.chats += len(lengths)
        return batch

    def take(self) -> dict:
        counts = {k: getattr(self, k) for k in ("positions", "real", "labelled", "pairs", "chats")}
        self.reset()
        return counts


def matmul_rate(size: int = PROBE_SIZE, repeats: int = 3, dtype: str = "float32") -> float:
    """FLOP/s of a size × size matmul on this machine now: the median of ``repeats`` (the best would flatter
    the machine when other processes come and go, while a training step sees their average)."""
    import torch

    a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
    return _median_rate(lambda: torch.matmul(a, b), size, repeats)


def numpy_matmul_rate(size: int = PROBE_SIZE, repeats: int = 3) -> float:
    """The same probe through numpy's BLAS (OpenBLAS in the numpy wheel), fp32."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    return _median_rate(lambda: a @ b, size, repeats)


def _median_rate(multiply, size: int, repeats: int) -> float:
    multiply()  # first call: allocation and thread start-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        multiply()
        seconds.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(seconds)


def _instrument(trainer, probe: bool) -> list[dict]:
    """Time every optimizer step; optionally probe the matmul rate after each one (outside the timed window)."""
    from transformers import TrainerCallback

    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    steps: list[dict] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
            # Batches are collated before on_step_begin, so the counts since the last step are this step's.
            steps.append({"step": state.global_step, "seconds": wall, "cpu_seconds": cpu, **counter.take()})
            if probe:
                steps[-1]["matmul_flops_after"] = matmul_rate()
                steps[-1]["numpy_matmul_flops_after"] = numpy_matmul_rate()

    trainer.add_callback(StepClock())
    return steps


def finetune_args(flags: list[str]) -> argparse.Namespace:
    """finetune.py's own flags, parsed as the step parses them (from its component.yml)."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(FINETUNE_SPEC).parse_args(flags)


def _local_finetune_flags(model: str, data: str, out: Path, max_steps: int, overrides: list[str] = ()) -> list[str]:
    """finetune.py flags: local.yaml's finetune section (+ --set overrides), the bench's model/data/output folders
    and step bound."""
    from pipelines.settings import load_settings

    section = load_settings(LOCAL_PRESET, [f"finetune.{item}" for item in overrides]).step("finetune")
    if not any(item.startswith("gradient_accumulation_steps=") for item in overrides):
        # The same rows per optimizer step as TRL's default (8 per device × 1); tokens/s does not depend on it.
        section["gradient_accumulation_steps"] = TRL_DEFAULT_ROWS // section.get("per_device_train_batch_size", 1)
    inputs = {
        **section,
        "base_model": model,
        "train_data": data,
        "max_steps": max_steps,
        "adapter": out / "adapter",
        "merged_model": out / "merged_model",
        "checkpoints": out / "checkpoints",
    }
    return [item for name, value in inputs.items() for item in (f"--{name}", str(value))]


def model_shape(trainer) -> dict:
    """What the FLOP formulas multiply. Linear layers are counted as in × out: a 4-bit layer stores half a byte per
    weight, so its numel() would undercount them."""
    import torch

    model = trainer.model
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = adapters = 0
    for name, module in causal_lm.base_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                adapters += module.in_features * module.out_features
            else:
                body += module.in_features * module.out_features
    head = causal_lm.get_output_embeddings()
    config = causal_lm.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "body_params": body,
        "head_params": head.in_features * head.out_features,
        "adapter_params": adapters,
        "attention_width": config.num_attention_heads * head_dim,
        "layers": config.num_hidden_layers,
    }


def run_ours(args: argparse.Namespace) -> dict:
    from chatft.training.outputs import precision_used
    from chatft.training.trainer import build_trainer

    data = str(REPO / "data" / "sample")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as out:
        flags = _local_finetune_flags(args.model, data, Path(out), args.warmup + args.steps, args.overrides)
        ft_args = finetune_args(flags)
        probes_before = [matmul_rate() for _ in range(3)]
        numpy_before = [numpy_matmul_rate() for _ in range(3)]
        bf16_probes = [matmul_rate(dtype="bfloat16") for _ in range(3)]
        trainer = build_trainer(ft_args)
        steps = _instrument(trainer, probe=True)
        trainer.train()
    t = trainer.args
    return {
        "settings": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(ft_args).items()
            if k not in ("adapter", "merged_model", "checkpoints")
        },
        "global_batch_rows": t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size,
        "max_length": t.max_length,
        "precision": precision_used(t),
        "model": model_shape(trainer),
        "matmul_flops_before": probes_before,
        "numpy_matmul_flops_before": numpy_before,
        "bf16_matmul_flops": statistics.median(bf16_probes),
        "steps": steps,
    }


def baseline_bf16(requested: str) -> bool:
    """TRL's bf16 default, kept only where the CPU multiplies bf16 (chatft/devices.py), unless forced."""
    from chatft.devices import cpu_multiplies_bf16

    return cpu_multiplies_bf16() if requested == "auto" else requested == "bf16"


def run_baseline(args: argparse.Namespace) -> dict:
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from chatft.model_source import lora_target_modules, training_chat_template
    from pipelines.settings import load_settings

    tuned = args.worker == "tuned"
    ours = finetune_args(_local_finetune_flags(args.model, "unused", Path("unused"), 1))
    files = sorted(str(p) for p in (REPO / "data" / "sample").glob("*.jsonl"))
    dataset = load_dataset("json", data_files=files, split="train")
    model_type = json.loads((Path(args.model) / "config.json").read_text(encoding="utf-8"))["model_type"]
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as out:
        # TRL's bf16 default stays where the CPU multiplies bf16; emulated elsewhere, it would not finish.
        changes = {"bf16": False} if tuned or not baseline_bf16(args.baseline_precision) else {}
        if tuned:
            changes |= {"gradient_checkpointing": False, "packing": True, "assistant_only_loss": True}
        config = SFTConfig(
            output_dir=out,
            use_cpu=True,  # the one change the CPU forces (bf16 and checkpointing defaults otherwise refuse)
            max_length=load_settings(LOCAL_PRESET).step("finetune")["max_seq_length"],  # the shared length
            max_steps=args.warmup + args.steps,  # the bench's bound
            **changes,
        )
        peft_config = LoraConfig(
            r=ours.lora_r,
            lora_alpha=ours.lora_alpha,
            target_modules=lora_target_modules(model_type, ours.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        processing = {}
        if tuned:  # assistant_only_loss needs {% generation %} markers, which SmolLM2's stock template lacks
            from chatft.model_source import load_tokenizer

            tokenizer = load_tokenizer(args.model)
            tokenizer.chat_template = training_chat_template(tokenizer)
            processing = {"processing_class": tokenizer}
        trainer = SFTTrainer(
            model=args.model, args=config, train_dataset=dataset, peft_config=peft_config, **processing
        )
        steps = _instrument(trainer, probe=False)
        trainer.train()
    t = trainer.args
    return {
        "changed_from_defaults": changes,
        "settings": {
            "per_device_train_batch_size": t.per_device_train_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "bf16": t.bf16,
            "gradient_checkpointing": t.gradient_checkpointing,
            "packing": t.packing,
            "assistant_only_loss": t.assistant_only_loss,
        },
        "global_batch_rows": t.per_device_train_batch_size * t.gradient_accumulation_steps * t.world_size,
        "max_length": t.max_length,
        "steps": steps,
    }


# ---- the parent: runs both, compares ---------------------------------------------------------------------------
def _worker_env(kind: str, baseline_env: str) -> dict[str, str]:
    from pipelines.local_backend import _MALLOC_TUNABLES  # what the local backend gives every step

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    if kind == "ours" or baseline_env == "same":
        env["GLIBC_TUNABLES"] = _MALLOC_TUNABLES
    return env


def _run_worker(kind: str, model: Path, args: argparse.Namespace, folder: Path) -> dict:
    result = folder / f"{kind}.json"
    command = [sys.executable, "-m", "bench.bench_finetune", "--worker", kind, "--model", str(model)]
    command += ["--result", str(result), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += [item for override in args.overrides for item in ("--set", override)]
    command += ["--baseline-precision", args.baseline_precision]
    print(f"running {kind} ({args.warmup} warm-up + {args.steps} measured optimizer steps) ...", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=_worker_env(kind, args.baseline_env), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench_finetune: the {kind} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(result.read_text(encoding="utf-8"))


def main(args: argparse.Namespace) -> int:
    if args.worker:
        result = run_ours(args) if args.worker == "ours" else run_baseline(args)
        Path(args.result).write_text(json.dumps(result), encoding="utf-8")
        return 0
    from pipelines.run import prepare_base_model
    from pipelines.settings import load_settings

    started = time.perf_counter()
    output_root = Path(args.output_root)
    output_root = output_root if output_root.is_absolute() else REPO / output_root
    model = Path(prepare_base_model(load_settings(LOCAL_PRESET), output_root))
    kinds = BASELINES[:1] if args.skip_tuned else BASELINES
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as folder:
        baselines = {kind: _run_worker(kind, model, args, Path(folder)) for kind in kinds}
        ours = _run_worker("ours", model, args, Path(folder))
    for kind, run in baselines.items():
        if ours["global_batch_rows"] != run["global_batch_rows"] or ours["max_length"] != run["max_length"]:
            sys.exit(f"bench_finetune: ours and {kind} differ in global batch size or sequence length; fix the bench")
    result = compare(ours, baselines, args.warmup)
    report(ours, baselines, result, args)
    print(f"bench_finetune took {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"result": result, "ours": ours, **baselines}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
