"""What a run leaves: the merged model, train_metrics.json, the loss curve, and their MLflow records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def merge(args: argparse.Namespace, trainer):
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


def plot_loss_curve(history: list[dict], path: Path, title: str) -> None:
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


def precision_used(training_args) -> str:
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def save_merged(args: argparse.Namespace, trainer) -> Path:
    """The base's own tokenizer beside the adapter, and the merged model with it in --merged_model."""
    from chatft.model_source import apply_stop_tokens, load_tokenizer

    adapter, merged = Path(args.adapter), Path(args.merged_model)
    # The base's own tokenizer, stock chat template included (training swapped in one with generation markers).
    tokenizer = load_tokenizer(args.base_model)
    tokenizer.save_pretrained(adapter)
    model = merge(args, trainer)
    apply_stop_tokens(model, tokenizer)  # generation stops at the end of a turn (<|end|> for Phi), not past it
    model.save_pretrained(merged)
    tokenizer.save_pretrained(merged)
    return merged


def write_metrics(metrics: dict, history: list[dict], folder: Path, title: str) -> None:
    """train_metrics.json and loss_curve.png in ``folder``, both logged to the active MLflow run with the metrics."""
    import mlflow

    (folder / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_loss_curve(history, folder / "loss_curve.png", title)
    mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)})
    mlflow.log_artifact(str(folder / "train_metrics.json"))
    mlflow.log_artifact(str(folder / "loss_curve.png"))
