"""The training settings that must agree with each other and with the machine, and the SFTConfig built from them."""

from __future__ import annotations

import argparse
import importlib.util

from chatft.errors import UsageError


class ConfigError(UsageError, ValueError):
    """Inputs that cannot work together or on this machine; the message says what to change."""


def resolve_precision(requested: str, device: str) -> str:
    """The precision policy of chatft.devices (one place for finetune, evaluate and serving)."""
    from chatft.devices import PrecisionError, training_precision

    try:
        return training_precision(requested, device)
    except PrecisionError as err:
        raise ConfigError(str(err)) from None


def check_qlora(device: str) -> None:
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


def sft_config(args: argparse.Namespace, precision: str, device: str, periodic_eval: bool):
    """The SFTConfig of a run: its flags, the data packing, the precision and the distributed strategy."""
    from trl import SFTConfig

    strategy = strategy_config(args.distributed_strategy, device)
    return SFTConfig(
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
        report_to="none",  # MLflow logging is ours (callbacks.step_logger), inside the run the platform set up
        **strategy,  # distributed_strategy: DeepSpeed ZeRO or FSDP arguments; nothing for ddp
    )
