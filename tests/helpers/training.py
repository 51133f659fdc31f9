"""Command-line flags from a dict, train/validation chat folders, and the real finetune step run in-process on tiny
assets (set-up for the evaluation tests, which need a tuned model to compare)."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]


def cli_flags(values: dict) -> list[str]:
    """``{"max_steps": 8}`` -> ``["--max_steps", "8"]``: flags named like a component's inputs and outputs."""
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def write_chat_splits(root: Path, train: int = 24, validation: int = 6) -> Path:
    """``root/train/`` and ``root/validation/`` folders of chat JSONL, as prep_data writes them; returns ``root``."""
    write_jsonl(root / "train" / "train.jsonl", make_conversations(train))
    write_jsonl(root / "validation" / "validation.jsonl", make_conversations(validation, seed=1))
    return root


@functools.cache
def finetune_script():
    return load_script("component_finetune_for_tests", REPO / "components" / "finetune" / "finetune.py")


# Small and quick for tiny models: one sequence per optimizer step, short sequences (callers override any of them).
TINY_SETTINGS = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_seq_length": 256}


def run_finetune(base_model: Path, train_data: Path, out: Path, **settings) -> Path:
    """Fine-tune ``base_model`` on ``train_data`` with finetune's own main (``settings``: its other inputs, over
    ``TINY_SETTINGS``); the outputs go under ``out``. Returns the merged_model folder."""
    finetune = finetune_script()
    flags = {
        "base_model": base_model,
        "train_data": train_data,
        **TINY_SETTINGS,
        **settings,
        "adapter": out / "adapter",
        "merged_model": out / "merged_model",
        "checkpoints": out / "checkpoints",
    }
    finetune.main(finetune.parse_args(cli_flags(flags)))
    return out / "merged_model"
