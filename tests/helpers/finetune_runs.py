"""finetune.py as the tests run it: the script, the chats to train on, short-run flags, and what a run trained."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "finetune"
PHI3_TARGETS = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}

finetune = load_script("component_finetune", COMPONENT_DIR / "finetune.py")


def run_args(model: Path, chats: Path, out: Path, *, validation: bool = True, **inputs) -> list[str]:
    """CLI flags for a short run; spec defaults for everything not given."""
    flags = {
        "base_model": model,
        "train_data": chats / "train",
        "max_steps": 4,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "max_seq_length": 256,
        "learning_rate": 5e-3,
        "precision": "fp32",  # the same arithmetic on every CPU; auto and bf16 have tests of their own
        "adapter": out / "adapter",
        "merged_model": out / "merged_model",
        "checkpoints": out / "checkpoints",
        **inputs,
    }
    if validation:
        flags["validation_data"] = chats / "validation"
    return [item for name, value in flags.items() for item in (f"--{name}", str(value))]


def latest_run(mlflow_store):
    _, client, experiment_id = mlflow_store
    return client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]


def loss_spans(trainer) -> list[str]:
    """Decoded text of every contiguous run of loss-carrying tokens in the batches the model is trained on."""
    tokenizer = trainer.processing_class
    spans = []
    for batch in trainer.get_train_dataloader():
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            run: list[int] = []
            for token, label in zip(ids, labels, strict=True):
                if label != -100:
                    run.append(token)
                elif run:
                    spans.append(tokenizer.decode(run))
                    run = []
            if run:
                spans.append(tokenizer.decode(run))
    return spans
