"""Score the base model on the validation chats once, for every evaluate that follows.

    python score_base.py --base_model BASE --validation_data DATA --base_score OUT/base_score

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Uses evaluate.py's own functions (beside this script in a step's snapshot, ../evaluate/ in the repository), so the
base model is measured exactly as evaluate measures the tuned one, and records a digest of what it scored.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

SPEC = Path(__file__).with_name("component.yml")
EVALUATE_MODULE = ("evaluate.py", "../evaluate/evaluate.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


@functools.cache
def _evaluate_module():
    here = Path(__file__).resolve().parent
    path = next((here / p for p in EVALUATE_MODULE if (here / p).is_file()), None)
    if path is None:
        raise RuntimeError(f"evaluate.py not found beside {here} (additional_includes of component.yml)")
    spec = importlib.util.spec_from_file_location("evaluate_component", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(args: argparse.Namespace) -> dict:
    import mlflow

    from chatft.model_source import load_tokenizer

    evaluate = _evaluate_module()
    started = time.perf_counter()
    chats = evaluate._load_chats(args.validation_data)
    tokenizer = load_tokenizer(args.base_model)
    encoded = evaluate._encode(tokenizer, chats, args.max_seq_length)
    samples = evaluate._samples(chats, args.num_generation_samples)
    print(f"score_base: scoring {args.base_model} on {len(chats)} validation chats", flush=True)
    metrics, answers = evaluate._evaluate_model(str(args.base_model), tokenizer, encoded, samples, args)
    score = {
        "base_model": str(args.base_model),
        "validation_chats": len(chats),
        "metrics": metrics,
        "answers": answers,
        "digest": evaluate.scoring_digest(encoded, samples, args),
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.base_score)
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_score.json").write_text(json.dumps(score, indent=2) + "\n", encoding="utf-8")
    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in vars(args).items() if k != "base_score"})
        mlflow.log_metrics({f"base_{k}": float(v) for k, v in metrics.items()} | {"seconds": score["seconds"]})
    print(json.dumps({k: v for k, v in score.items() if k != "answers"}, indent=2), flush=True)
    return score


if __name__ == "__main__":
    try:
        main(parse_args())
    except _evaluate_module().EvalError as err:
        sys.exit(f"score_base: {err}")
