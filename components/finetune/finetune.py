"""Supervised fine-tuning of a chat model with TRL's SFTTrainer and PEFT (LoRA, DoRA, QLoRA) or in full.

    python finetune.py --base_model MODEL --train_data DATA [--validation_data DATA] \
        --adapter OUT/adapter --merged_model OUT/merged --checkpoints OUT/checkpoints [--method dora ...]

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Shape: build_trainer() (data → tokenizer → model → PEFT → SFTTrainer) → train (resuming from the last complete
checkpoint in --checkpoints) → save adapter → merge into a standalone model → metrics, loss curve, MLflow.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

SPEC = Path(__file__).with_name("component.yml")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written by the Trainer after the weights, optimizer and RNG state: a checkpoint without it was cut short.
COMPLETE_MARKER = "trainer_state.json"


class ConfigError(ValueError):
    """Inputs that cannot work together or on this machine; the message says what to change."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, enums, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def _resolve_precision(requested: str, device: str) -> str:
    import torch

    if device == "cpu":
        if requested == "fp16":
            raise ConfigError("precision=fp16 needs a CUDA GPU; use fp32 (or auto) on CPU")
        # bf16 runs on CPU but ~0.6× as fast as fp32 without AMX (PLATFORM_NOTES); only when asked for.
        return "fp32" if requested == "auto" else requested
    bf16_ok = torch.cuda.is_bf16_supported()
    if requested == "bf16" and not bf16_ok:
        raise ConfigError("precision=bf16: this GPU does not support bfloat16; use fp16 or auto")
    if requested == "auto":
        return "bf16" if bf16_ok else "fp16"
    return requested


def _check_qlora(device: str) -> None:
    import importlib.util

    if device != "cuda":
        raise ConfigError(
            "method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels) and this machine has none; "
            "use method=lora on CPU, or run the step on the GPU cluster"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs the bitsandbytes package in the environment; install it or use lora")


def _load_model(args: argparse.Namespace, precision: str):
    import torch

    from chatft.model_source import find_model_dir, load_causal_lm

    if args.method == "qlora":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        return AutoModelForCausalLM.from_pretrained(
            find_model_dir(args.base_model), quantization_config=quantization, dtype=compute_dtype, device_map={"": 0}
        )
    # Adapters train in fp32 on top of a half-precision base (PEFT upcasts them); full fine-tuning keeps fp32
    # master weights and lets autocast run the matmuls in half precision.
    return load_causal_lm(args.base_model, dtype="fp32" if args.method == "full" else precision)


def _peft_config(args: argparse.Namespace, model_type: str):
    from peft import LoraConfig

    from chatft.model_source import lora_target_modules

    if args.method == "full":
        return None
    return LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=lora_target_modules(model_type, args.lora_target_modules),
        use_dora=args.method == "dora",
        task_type="CAUSAL_LM",
    )


def _load_chats(folder: str | None, input_name: str):
    """The chats of every .jsonl file under ``folder`` (validated upstream by validate_chat_jsonl)."""
    from datasets import load_dataset

    from chatft.jsonl_io import NoJsonlFilesError, list_jsonl_files

    if folder is None:
        return None
    try:
        files = list_jsonl_files(folder)
    except NoJsonlFilesError as err:
        raise ConfigError(f"{input_name}: {err}") from None
    dataset = load_dataset("json", data_files=[str(f.path) for f in files], split="train")
    if "messages" not in dataset.column_names:
        raise ConfigError(f"{input_name}: {files[0].path} has no 'messages' field; expected {{\"messages\": [...]}}")
    unweighted = sum(m.get("weight") == 0 for chat in dataset["messages"] for m in chat)
    if unweighted:
        print(f"finetune: {input_name}: {unweighted} turns have weight 0; every assistant turn is trained", flush=True)
    return dataset.select_columns(["messages"])


def build_trainer(args: argparse.Namespace):
    """Tokenizer, model, PEFT config and data wired into an SFTTrainer, ready to train (nothing trained yet)."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from chatft.model_source import load_tokenizer, training_chat_template

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = _resolve_precision(args.precision, device)
    if args.method == "qlora":
        _check_qlora(device)

    # Cheap checks first: data, then the tokenizer, before the model is loaded.
    train_data = _load_chats(args.train_data, "train_data")
    validation_data = _load_chats(args.validation_data, "validation_data")
    tokenizer = load_tokenizer(args.base_model)
    if args.assistant_only_loss:
        # Renders the same text as the stock template, with {% generation %} around the assistant's tokens.
        tokenizer.chat_template = training_chat_template(tokenizer)
    model = _load_model(args, precision)
    periodic_eval = validation_data is not None and args.eval_steps > 0

    config = SFTConfig(
        output_dir=args.checkpoints,
        seed=args.seed,
        learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_ratio,  # a value below 1 is a fraction of the total steps
        weight_decay=args.weight_decay,
        # Data: best-fit packing into max_length rows, flattened padding-free with positions restarting per chat
        # (the attention mask is built from them). Small per-device batches keep the flattened row short: without a
        # varlen kernel (CPU) attention over it is quadratic (PLATFORM_NOTES).
        max_length=args.max_seq_length,
        packing=args.packing,
        packing_strategy="bfd",
        assistant_only_loss=args.assistant_only_loss,
        # Precision: fp32 on CPU is fastest; gradient checkpointing only pays where memory is short (GPU).
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=device == "cuda",
        use_cpu=device == "cpu",  # else bf16 on CPU is refused
        dataloader_pin_memory=device == "cuda",
        # Bookkeeping: log every step, checkpoint every save_steps (keep two), validate every eval_steps.
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=args.eval_steps if periodic_eval else None,
        eval_on_start=periodic_eval,
        report_to="none",  # MLflow logging is ours (_step_logger), inside the run the platform set up
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=train_data,
        eval_dataset=validation_data,
        processing_class=tokenizer,
        peft_config=_peft_config(args, model.config.model_type),
    )


def last_complete_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint-<step> in ``folder`` that was written to the end, or None.

    A checkpoint cut short (the node was pre-empted while saving) is removed: the Trainer would count it when
    rotating old checkpoints, and rewrites it anyway when training gets back to that step.
    """
    found = sorted(
        (int(m.group(1)), p)
        for p in Path(folder).glob("checkpoint-*")
        if (m := CHECKPOINT.match(p.name)) and p.is_dir()
    )
    complete = []
    for _, path in found:
        if (path / COMPLETE_MARKER).is_file():
            complete.append(path)
        else:
            print(f"finetune: removing {path}: it has no {COMPLETE_MARKER}, the save was cut short", flush=True)
            shutil.rmtree(path)
    return complete[-1] if complete else None


class _BatchStats:
    """Wraps the trainer's collator to count, per batch, computed positions, real tokens and loss tokens."""

    def __init__(self, collate):
        self.collate = collate
        self.positions = self.real = self.loss = 0

    def __call__(self, examples):
        batch = self.collate(examples)
        positions = batch["input_ids"].numel()
        self.positions += positions
        # A padding-free batch (packing) is one flat row without padding, and has no attention mask.
        self.real += int(batch["attention_mask"].sum()) if "attention_mask" in batch else positions
        self.loss += int((batch["labels"] != -100).sum())
        return batch

    def take(self) -> tuple[int, int, int]:
        counts = (self.positions, self.real, self.loss)
        self.positions = self.real = self.loss = 0
        return counts


def _step_logger(stats: _BatchStats):
    """A callback that sends each Trainer log line to the active MLflow run, with throughput since the last one."""
    import mlflow
    from transformers import TrainerCallback

    class StepLogger(TrainerCallback):
        def __init__(self):
            self.clock = time.perf_counter()
            self.last_num_tokens = 0
            # Totals over training steps only (evaluation and checkpoint time excluded).
            self.seconds = 0.0
            self.tokens = self.positions = self.real = self.loss = 0

        def restart_clock(self, *_, **__):
            self.clock = time.perf_counter()

        on_train_begin = on_save = restart_clock

        def on_evaluate(self, args, state, control, **kwargs):
            stats.take()  # evaluation batches go through the same collator
            self.restart_clock()

        def on_log(self, args, state, control, logs=None, **kwargs):
            metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
            if "loss" in metrics and "num_tokens" in metrics:  # a training step
                now = time.perf_counter()
                seconds, self.clock = now - self.clock, now
                tokens = int(metrics["num_tokens"]) - self.last_num_tokens
                self.last_num_tokens = int(metrics["num_tokens"])
                positions, real, loss = stats.take()
                self.seconds += seconds
                self.tokens += tokens
                self.positions, self.real, self.loss = self.positions + positions, self.real + real, self.loss + loss
                metrics["tokens_per_second"] = tokens / max(seconds, 1e-9)
                if positions:
                    metrics["real_token_fraction"] = real / positions
                    metrics["loss_token_fraction"] = loss / max(real, 1)
            mlflow.log_metrics(metrics, step=state.global_step)

    return StepLogger()


def _merge(args: argparse.Namespace, trainer, precision: str):
    """The standalone model to ship: the adapter saved in --adapter merged into a fresh, unquantized base."""
    import torch
    from peft import PeftModel

    from chatft.model_source import load_causal_lm

    if args.method == "full":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
        return trainer.model.to(dtype)
    # Reloading (rather than merging the training copy in place) works for QLoRA's 4-bit base too, and proves
    # the saved adapter is complete.
    base = load_causal_lm(args.base_model, dtype=precision)
    return PeftModel.from_pretrained(base, args.adapter).merge_and_unload()


def _plot_loss_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args: argparse.Namespace) -> dict:
    import mlflow

    from chatft.model_source import load_tokenizer

    started = time.perf_counter()
    trainer = build_trainer(args)
    device = trainer.args.device.type
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    stats = _BatchStats(trainer.data_collator)
    trainer.data_collator = stats
    step_logger = _step_logger(stats)
    trainer.add_callback(step_logger)
    resume_from = last_complete_checkpoint(args.checkpoints) if Path(args.checkpoints).is_dir() else None
    resumed_step = int(CHECKPOINT.match(resume_from.name).group(1)) if resume_from else 0
    if resume_from:
        print(f"finetune: resuming from {resume_from} (step {resumed_step})", flush=True)

    with mlflow.start_run():
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        mlflow.log_params({**vars(args), "device": device, "precision_used": precision, "trainable_params": trainable})

        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        history = trainer.state.log_history
        if trainer.eval_dataset is not None and not any("eval_loss" in h and h["step"] == step for h in history):
            trainer.evaluate()  # the validation loss of the final weights

        adapter, merged = Path(args.adapter), Path(args.merged_model)
        trainer.save_model(str(adapter))
        # The base's own tokenizer, stock chat template included (training swapped in one with generation markers).
        tokenizer = load_tokenizer(args.base_model)
        tokenizer.save_pretrained(adapter)
        model = _merge(args, trainer, precision)
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)

        evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
        metrics = {
            "method": args.method,
            "device": device,
            "precision": precision,
            "global_step": step,
            "resumed_from_step": resumed_step,
            "epoch": trainer.state.epoch,
            "train_loss": result.training_loss,
            "eval_loss_start": evals.get(0),  # None unless validated before training (eval_steps > 0)
            "eval_loss_end": evals[max(evals)] if evals else None,
            "train_seconds": step_logger.seconds,
            "train_tokens": step_logger.tokens,
            "tokens_per_second": step_logger.tokens / max(step_logger.seconds, 1e-9),
            "real_token_fraction": step_logger.real / max(step_logger.positions, 1),
            "loss_token_fraction": step_logger.loss / max(step_logger.real, 1),
            "trainable_params": trainable,
            "total_params": total,
            "wall_seconds": time.perf_counter() - started,
        }
        (merged / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        _plot_loss_curve(history, merged / "loss_curve.png", f"{args.method} fine-tuning, {step} steps")
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_artifact(str(merged / "train_metrics.json"))
        mlflow.log_artifact(str(merged / "loss_curve.png"))
    print(json.dumps(metrics, indent=2), flush=True)
    return metrics


if __name__ == "__main__":
    try:
        main(parse_args())
    except ConfigError as err:
        sys.exit(f"finetune: {err}")
