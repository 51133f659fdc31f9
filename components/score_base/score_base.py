"""Score the base model on the validation chats once, for every evaluate that follows.

    python score_base.py --base_model BASE --validation_data DATA --base_score OUT/base_score

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Uses evaluate's scoring (chatft.evaluation), so the base model is measured exactly as evaluate measures the tuned
one, and records a digest of what it scored.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chatft import evaluation
from chatft.errors import exit_on_error

SPEC = Path(__file__).with_name("component.yml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    import mlflow

    started = time.perf_counter()
    scoring = evaluation.prepare(
        args.validation_data, args.base_model, args.max_seq_length, args.num_generation_samples
    )
    print(f"score_base: scoring {args.base_model} on {len(scoring.chats)} validation chats", flush=True)
    model = evaluation.load_model(str(args.base_model))
    metrics, answers = evaluation.score_and_answer(model, scoring, args.max_new_tokens, args.batch_size)
    score = {
        "base_model": str(args.base_model),
        "validation_chats": len(scoring.chats),
        "metrics": metrics,
        "answers": answers,
        "digest": evaluation.scoring_digest(scoring, args.max_new_tokens),
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.base_score)
    out.mkdir(parents=True, exist_ok=True)
    (out / evaluation.BASE_SCORE).write_text(json.dumps(score, indent=2) + "\n", encoding="utf-8")
    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in vars(args).items() if k != "base_score"})
        mlflow.log_metrics({f"base_{k}": float(v) for k, v in metrics.items()} | {"seconds": score["seconds"]})
    print(json.dumps({k: v for k, v in score.items() if k != "answers"}, indent=2), flush=True)
    return score


if __name__ == "__main__":
    exit_on_error("score_base", main, parse_args())
