"""Supervised fine-tuning of a chat model with TRL's SFTTrainer and PEFT (LoRA, DoRA, QLoRA) or in full.

    python finetune.py --base_model MODEL --train_data DATA [--validation_data DATA] \
        --adapter OUT/adapter --merged_model OUT/merged --checkpoints OUT/checkpoints [--method dora ...]

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Shape: build_trainer() (data → tokenizer → model → PEFT → SFTTrainer) → train (resuming from the last complete
checkpoint in --checkpoints) → save adapter → merge into a standalone model → metrics, loss curve, MLflow.
The pieces live in chatft/training/; this script wires them in that order.
Under Azure ML's `distribution: pytorch` every process runs this script; the Trainer reads the rank from the
environment, and only rank 0 merges, writes metrics and logs to MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from chatft.component_cli import spec_arg_parser
from chatft.errors import exit_on_error
from chatft.training.callbacks import BatchStats, progress, step_logger
from chatft.training.checkpoints import last_complete_checkpoint, resume_point
from chatft.training.config import ConfigError, strategy_config
from chatft.training.outputs import batch_geometry, parameter_counts, precision_used, save_merged, write_metrics
from chatft.training.trainer import build_trainer

SPEC = Path(__file__).with_name("component.yml")
# Importable from the script, as the tests and benches use them.
__all__ = ["ConfigError", "build_trainer", "last_complete_checkpoint", "main", "parse_args", "strategy_config"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, enums, ranges and defaults come from the spec."""
    return spec_arg_parser(SPEC).parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    """Build, resume, train, evaluate, save and merge; the metrics on the main process, {} on the others."""
    import mlflow

    started = time.perf_counter()
    trainer = build_trainer(args)
    main_process = trainer.is_world_process_zero()
    geometry = batch_geometry(trainer)
    if main_process:
        print(
            f"finetune: {geometry['world_size']} process(es) × {args.per_device_train_batch_size} rows × "
            f"{args.gradient_accumulation_steps} accumulation = {geometry['global_batch_rows']} rows of up to "
            f"{args.max_seq_length} tokens per optimizer step (effective global batch)",
            flush=True,
        )
    logger = _instrument(trainer)
    resume_from, resumed_step = resume_point(args.checkpoints, main_process)
    if resume_from and main_process:
        print(f"finetune: resuming from {resume_from} (step {resumed_step})", flush=True)

    # Only rank 0 talks to MLflow and writes the merged model; every rank trains, evaluates and saves (the Trainer
    # itself writes from the main process only).
    with mlflow.start_run() if main_process else contextlib.nullcontext():
        trainable, total = parameter_counts(trainer.model)
        if main_process:
            params = {**vars(args), "device": trainer.args.device.type, "precision_used": precision_used(trainer.args)}
            mlflow.log_params(params | {"trainable_params": trainable} | geometry)
        result = _train(trainer, resume_from)
        trainer.save_model(str(Path(args.adapter)))
        _leave_process_group()
        if not main_process:
            return {}
        merged = save_merged(args, trainer)
        metrics = {
            **_run_metrics(args, trainer, result.training_loss, geometry, resumed_step),
            **_throughput(logger),
            "trainable_params": trainable,
            "total_params": total,
            "wall_seconds": time.perf_counter() - started,
        }
        step = trainer.state.global_step
        write_metrics(metrics, trainer.state.log_history, merged, f"{args.method} fine-tuning, {step} steps")
    print(json.dumps(metrics, indent=2), flush=True)
    return metrics


def _instrument(trainer):
    """Count tokens per batch through the collator; log each step to MLflow and print progress. The step logger."""
    stats = BatchStats(trainer.data_collator)
    trainer.data_collator = stats
    logger = step_logger(stats)
    trainer.add_callback(logger)
    trainer.add_callback(progress())
    return logger


def _leave_process_group() -> None:
    """Every rank waits for the others, then closes the process group itself. A rank that exits with the group still
    open can abort in torch's teardown ("terminate called without an active exception", exit -6: seen in CI with two
    ranks on gloo), which fails a run that had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _train(trainer, resume_from: Path | None):
    """Train (from the checkpoint, if any), then make sure the final weights have a validation loss."""
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step, history = trainer.state.global_step, trainer.state.log_history
    if trainer.eval_dataset is not None and not any("eval_loss" in h and h["step"] == step for h in history):
        trainer.evaluate()  # the validation loss of the final weights
    return result


def _run_metrics(args: argparse.Namespace, trainer, train_loss: float, geometry: dict, resumed_step: int) -> dict:
    evals = {h["step"]: h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h}
    return {
        "method": args.method,
        "device": trainer.args.device.type,
        "precision": precision_used(trainer.args),
        **geometry,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "epoch": trainer.state.epoch,
        "train_loss": train_loss,
        "eval_loss_start": evals.get(0),  # None unless validated before training (eval_steps > 0)
        "eval_loss_end": evals[max(evals)] if evals else None,
    }


def _throughput(logger) -> dict:
    """Totals over the training steps the step logger saw (evaluation and checkpoint time excluded)."""
    return {
        "train_seconds": logger.seconds,
        "train_tokens": logger.tokens,
        "tokens_per_second": logger.tokens / max(logger.seconds, 1e-9),
        "real_token_fraction": logger.real / max(logger.positions, 1),
        "loss_token_fraction": logger.loss / max(logger.real, 1),
    }


if __name__ == "__main__":
    exit_on_error("finetune", main, parse_args())
