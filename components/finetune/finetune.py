"""Supervised fine-tuning of a chat model with TRL's SFTTrainer and PEFT (LoRA, DoRA, QLoRA) or in full.

    python finetune.py --base_model MODEL --train_data DATA [--validation_data DATA] \
        --adapter OUT/adapter --merged_model OUT/merged --checkpoints OUT/checkpoints [--method dora ...]

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Shape: build_trainer() (data → tokenizer → model → PEFT → SFTTrainer) → train (resuming from the last complete
checkpoint in --checkpoints) → save adapter → merge into a standalone model → metrics, loss curve, MLflow.
Under Azure ML's `distribution: pytorch` every process runs this script; the Trainer reads the rank from the
environment, and only rank 0 merges, writes metrics and logs to MLflow.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

from chatft.errors import UsageError

SPEC = Path(__file__).with_name("component.yml")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Written by the Trainer after the weights, optimizer and RNG state: a checkpoint without it was cut short.
COMPLETE_MARKER = "trainer_state.json"


class ConfigError(UsageError, ValueError):
    """Inputs that cannot work together or on this machine; the message says what to change."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, enums, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def _resolve_precision(requested: str, device: str) -> str:
    """The precision policy of chatft.devices (one place for finetune, evaluate and serving)."""
    from chatft.devices import PrecisionError, training_precision

    try:
        return training_precision(requested, device)
    except PrecisionError as err:
        raise ConfigError(str(err)) from None


def _check_qlora(device: str) -> None:
    import importlib.util

    if device != "cuda":
        raise ConfigError(
            "method=qlora needs a CUDA GPU (bitsandbytes 4-bit kernels) and this machine has none; "
            "use method=lora on CPU, or run the step on the GPU cluster"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method=qlora needs the bitsandbytes package in the environment; install it or use lora")


def strategy_config(strategy: str, device: str) -> dict:
    """SFTConfig arguments for how the processes of a multi-GPU run share the model (the distributed_strategy input).

    ddp: every GPU holds the whole model (LoRA on a 3.8B model fits one A100 easily; the default). DeepSpeed ZeRO-2
    shards optimizer state and gradients, ZeRO-3 the weights too; FSDP (torch's, through accelerate) shards all
    three. "auto" values are filled in by the Trainer from the other arguments. Untested on GPUs here (no GPU in
    this project's CI); the CPU run refuses them.
    """
    import importlib.util

    if strategy == "ddp":
        return {}
    if device != "cuda":
        raise ConfigError(f"distributed_strategy={strategy} needs CUDA GPUs; on a CPU use ddp")
    if strategy == "fsdp":
        # Activation checkpointing moves into FSDP's own wrapper (the Trainer refuses both at once); ranks load the
        # checkpoint on rank 0 only and receive it, and the saved adapter is whole (FULL_STATE_DICT).
        fsdp = {
            "fsdp_version": 2,
            "reshard_after_forward": True,
            "activation_checkpointing": True,
            "cpu_ram_efficient_loading": True,
            "state_dict_type": "FULL_STATE_DICT",
        }
        return {"fsdp": True, "fsdp_config": fsdp, "activation_checkpointing": False}
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"distributed_strategy={strategy} needs the deepspeed package (environments/train/conda.yml pins it); "
            "use ddp or fsdp in an environment without it"
        )
    stage = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}[strategy]
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
    if stage == 3:  # save whole 16-bit weights (the adapter and the merge need them), not per-rank shards
        zero |= {"stage3_gather_16bit_weights_on_model_save": True, "stage3_prefetch_bucket_size": "auto"}
    deepspeed = {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }
    return {"deepspeed": deepspeed}


def _load_model(args: argparse.Namespace, precision: str, device: str):
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
    # master weights and lets autocast run the matmuls in half precision. On a CPU, plain attention (matmul,
    # softmax, matmul) over the short packed rows beat torch's SDPA kernel, whose backward is slow there: a bf16
    # step ran 5–12% faster on 2 cores (bench/README.md).
    attention = "eager" if device == "cpu" else None
    return load_causal_lm(
        args.base_model, dtype="fp32" if args.method == "full" else precision, attn_implementation=attention
    )


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
    return dataset.select_columns(["messages"])


def _trained_turns(chat: list[dict]) -> int:
    return sum(m["role"] == "assistant" and m.get("weight") != 0 for m in chat)


def _apply_weights(dataset, input_name: str, tokenizer, assistant_only_loss: bool):
    """Honour ``weight: 0`` turns: the chat template leaves them out of the loss; a chat with nothing left is dropped.

    Without assistant-only loss every token trains, so weights cannot apply: that is said, not silently ignored.
    """
    from chatft.model_source import zero_weight_honoured

    if dataset is None:
        return None
    unweighted = sum(m["role"] == "assistant" and m.get("weight") == 0 for chat in dataset["messages"] for m in chat)
    if not unweighted:
        return dataset
    if not assistant_only_loss:
        print(
            f"finetune: {input_name}: {unweighted} assistant turns have weight 0, but assistant_only_loss=false "
            "trains on every token, theirs included",
            flush=True,
        )
        return dataset
    if not zero_weight_honoured(tokenizer, tokenizer.chat_template):
        raise ConfigError(
            f"{input_name}: {unweighted} assistant turns have weight 0, but the chat template of the base model "
            "cannot leave them out of the loss (its {% generation %} blocks are not inside a `for message in "
            "messages` loop); remove those turns, or drop their weight key to train on them"
        )
    kept = dataset.filter(lambda row: _trained_turns(row["messages"]) > 0)
    print(
        f"finetune: {input_name}: {unweighted} assistant turns have weight 0 and carry no loss; "
        f"{len(dataset) - len(kept)} chats with no other assistant turn are left out",
        flush=True,
    )
    if not len(kept):
        raise ConfigError(f"{input_name}: every assistant turn has weight 0; there is nothing to train on")
    return kept


def _trainer_class():
    """TRL's SFTTrainer, projecting through the LM head only the positions that have a label when on one CPU.

    TRL's fused LM head scores only labelled positions on GPUs (a Triton kernel) but every position elsewhere, and
    with assistant-only loss about half of them have no label. On SmolLM2 the 49k-word head is a fifth of the
    matrix work of a step; skipping the unlabelled half made a CPU step 1.17× faster per CPU second
    (bench/README.md). The loss is the same sum over labelled tokens / num_items_in_batch.
    """
    import torch
    from trl import SFTTrainer

    class LabelledPositionsSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Elsewhere TRL's own path is the right one: GPUs (its compact kernel), DDP (the wrapper's forward must
            # run to sync gradients), MoE aux losses, and callers that want the logits.
            # (One process can still be DDP-wrapped: Azure ML sets RANK/WORLD_SIZE=1 for a one-process pytorch job.)
            wrapped = isinstance(model, torch.nn.parallel.DistributedDataParallel)
            single_cpu = self.args.device.type == "cpu" and self.accelerator.num_processes == 1 and not wrapped
            if not single_cpu or return_outputs or self.aux_loss_enabled:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT or full
            labels = inputs["labels"][:, 1:]
            scored = labels != -100
            features = {key: value for key, value in inputs.items() if key != "labels"}
            hidden = causal_lm.base_model(**features, use_cache=False).last_hidden_state[:, :-1][scored]
            logits = causal_lm.get_output_embeddings()(hidden).float()
            targets = labels[scored]
            count = int(scored.sum())
            loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else max(count, 1))
            # The metrics TRL logs, but entropy (a pass over every logit, for a number nobody reads here).
            with torch.no_grad():
                correct = int((logits.argmax(-1) == targets).sum())
            self._metrics[mode]["mean_token_accuracy"].append(correct / count if count else 0.0)
            if mode == "train":
                mask = inputs.get("attention_mask")
                self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return LabelledPositionsSFTTrainer


def build_trainer(args: argparse.Namespace):
    """Tokenizer, model, PEFT config and data wired into an SFTTrainer, ready to train (nothing trained yet)."""
    from trl import SFTConfig

    from chatft.devices import pick_device
    from chatft.model_source import load_tokenizer, training_chat_template

    device = pick_device()
    precision = _resolve_precision(args.precision, device)
    if args.method == "qlora":
        _check_qlora(device)

    # Cheap checks first: data, then the tokenizer, before the model is loaded.
    train_data = _load_chats(args.train_data, "train_data")
    # eval_steps -1: no validation loss at all (the evaluate step scores the tuned model on the same chats anyway).
    validation_data = _load_chats(args.validation_data, "validation_data") if args.eval_steps >= 0 else None
    tokenizer = load_tokenizer(args.base_model)
    if args.assistant_only_loss:
        # Renders the same text as the stock template, with {% generation %} around the assistant's tokens
        # (and not around a turn with weight 0).
        tokenizer.chat_template = training_chat_template(tokenizer)
    train_data = _apply_weights(train_data, "train_data", tokenizer, args.assistant_only_loss)
    validation_data = _apply_weights(validation_data, "validation_data", tokenizer, args.assistant_only_loss)
    model = _load_model(args, precision, device)
    periodic_eval = validation_data is not None and args.eval_steps > 0

    strategy = strategy_config(args.distributed_strategy, device)
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
        activation_checkpointing=strategy.pop("activation_checkpointing", device == "cuda"),
        use_cpu=device == "cpu",  # else bf16 on CPU is refused
        dataloader_pin_memory=device == "cuda",
        # Several processes (distribution: pytorch; accelerate picks gloo on CPU, NCCL on GPUs): the loss is
        # token-weighted over the whole global batch (labelled tokens counted across ranks), so 2 processes × 4
        # accumulation steps train as 1 × 8 do (tests/components/test_finetune_distributed.py).
        average_tokens_across_devices=True,
        # Bookkeeping: log every step, checkpoint every save_steps (keep two), validate every eval_steps.
        logging_steps=1,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=args.eval_steps if periodic_eval else None,
        eval_on_start=periodic_eval,
        report_to="none",  # MLflow logging is ours (_step_logger), inside the run the platform set up
        **strategy,  # distributed_strategy: DeepSpeed ZeRO or FSDP arguments; nothing for ddp
    )
    return _trainer_class()(
        model=model,
        args=config,
        train_dataset=train_data,
        eval_dataset=validation_data,
        processing_class=tokenizer,
        peft_config=_peft_config(args, model.config.model_type),
    )


def last_complete_checkpoint(folder: str | Path, remove_incomplete: bool = True) -> Path | None:
    """The newest checkpoint-<step> in ``folder`` that was written to the end, or None.

    A checkpoint cut short (the node was pre-empted while saving) is removed (by one process only, when several
    share the folder): the Trainer would count it when rotating old checkpoints, and rewrites it anyway when
    training gets back to that step.
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
        elif remove_incomplete:
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
            if state.is_world_process_zero:
                mlflow.log_metrics(metrics, step=state.global_step)

    return StepLogger()


def _progress(warmup_steps: int = 2):
    """A callback printing, on the main process, the training time to expect once ``warmup_steps`` optimizer
    steps have been measured on this machine, then one line per step with the time left.

    The pace is the median step after the first (which carries one-time costs: thread pools, first allocations).
    """
    import statistics

    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.first_step, self.times, self.clock = state.global_step, [], time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.times.append(now - self.clock)
            self.clock = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or "loss" not in (logs or {}) or not self.times:
                return
            done, left = state.global_step - self.first_step, state.max_steps - state.global_step
            pace = statistics.median(self.times[1:] or self.times)
            print(
                f"finetune: step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}  "
                f"{self.times[-1]:.1f} s  about {left * pace:.0f} s left",
                flush=True,
            )
            if done == min(warmup_steps, state.max_steps - self.first_step):
                print(
                    f"finetune: estimate from {done} measured step(s) on this machine: {pace:.1f} s per optimizer "
                    f"step, about {left * pace:.0f} s for the {left} left ({sum(self.times) + left * pace:.0f} s "
                    "of training in all)",
                    flush=True,
                )

    return Progress()


def _merge(args: argparse.Namespace, trainer):
    """The standalone model to ship, at the base checkpoint's own precision (whatever precision trained it): the
    adapter saved in --adapter merged into a fresh, unquantized base, or the fully fine-tuned weights.

    Merging into a base rounded to the training precision would cost accuracy for nothing: a bf16-trained SmolLM2
    adapter merged into its fp32 base scored validation perplexity 7.00, merged into a bf16 copy 7.06.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig

    from chatft.model_source import find_model_dir, load_causal_lm

    if args.method == "full":
        return trainer.model.to(AutoConfig.from_pretrained(find_model_dir(args.base_model)).dtype or torch.float32)
    # Reloading (rather than merging the training copy in place) works for QLoRA's 4-bit base too, and proves
    # the saved adapter is complete.
    base = load_causal_lm(args.base_model, dtype="auto")
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


def batch_geometry(trainer) -> dict:
    """What one optimizer step trains on, across every process (Azure ML's distribution: nodes × processes)."""
    args = trainer.args
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    return {
        "world_size": args.world_size,
        "global_batch_rows": rows,
        "global_batch_tokens_max": rows * trainer.args.max_length,
    }


def main(args: argparse.Namespace) -> dict:
    import contextlib

    import mlflow

    from chatft.model_families import apply_stop_tokens
    from chatft.model_source import load_tokenizer

    started = time.perf_counter()
    trainer = build_trainer(args)
    device = trainer.args.device.type
    precision = "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32"
    main_process = trainer.is_world_process_zero()
    geometry = batch_geometry(trainer)
    if main_process:
        print(
            f"finetune: {geometry['world_size']} process(es) × {args.per_device_train_batch_size} rows × "
            f"{args.gradient_accumulation_steps} accumulation = {geometry['global_batch_rows']} rows of up to "
            f"{args.max_seq_length} tokens per optimizer step (effective global batch)",
            flush=True,
        )
    stats = _BatchStats(trainer.data_collator)
    trainer.data_collator = stats
    step_logger = _step_logger(stats)
    trainer.add_callback(step_logger)
    trainer.add_callback(_progress())
    resume_from = last_complete_checkpoint(args.checkpoints, main_process) if Path(args.checkpoints).is_dir() else None
    resumed_step = int(CHECKPOINT.match(resume_from.name).group(1)) if resume_from else 0
    if resume_from and main_process:
        print(f"finetune: resuming from {resume_from} (step {resumed_step})", flush=True)

    # Only rank 0 talks to MLflow and writes the merged model; every rank trains, evaluates and saves (the Trainer
    # itself writes from the main process only).
    with mlflow.start_run() if main_process else contextlib.nullcontext():
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in trainer.model.parameters())
        if main_process:
            params = {**vars(args), "device": device, "precision_used": precision, "trainable_params": trainable}
            mlflow.log_params(params | geometry)

        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        step = trainer.state.global_step
        history = trainer.state.log_history
        if trainer.eval_dataset is not None and not any("eval_loss" in h and h["step"] == step for h in history):
            trainer.evaluate()  # the validation loss of the final weights

        adapter, merged = Path(args.adapter), Path(args.merged_model)
        trainer.save_model(str(adapter))
        if not main_process:
            return {}
        # The base's own tokenizer, stock chat template included (training swapped in one with generation markers).
        tokenizer = load_tokenizer(args.base_model)
        tokenizer.save_pretrained(adapter)
        model = _merge(args, trainer)
        apply_stop_tokens(model, tokenizer)  # generation stops at the end of a turn (<|end|> for Phi), not past it
        model.save_pretrained(merged)
        tokenizer.save_pretrained(merged)

        evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
        metrics = {
            "method": args.method,
            "device": device,
            "precision": precision,
            **geometry,
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
