"""Score the base model on the validation chats once, for every evaluate that follows.

    python score_base.py --base_model BASE --validation_data DATA --base_score OUT/base_score

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Uses evaluate's scoring (chatft.evaluation) and, with --safety_check, evaluate's safety check (chatft.safety_eval),
so the base model is measured exactly as evaluate measures the tuned one, and records a digest of what it measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chatft import evaluation, safety_eval
from chatft.errors import exit_on_error

SPEC = Path(__file__).with_name("component.yml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def _measure_safety(model, tokenizer, prompts, args: argparse.Namespace) -> dict | None:
    """The base model's refusal rates on the safety set, its answers, and the digest of the set and settings;
    None with --safety_check false (evaluate then measures them itself, if it needs them)."""
    if prompts is None:
        return None
    print(f"score_base: asking the base model {len(prompts)} safety prompts", flush=True)
    rates, answers = safety_eval.measure(model, tokenizer, prompts, args.safety_max_new_tokens)
    digest = safety_eval.digest(prompts, args.safety_max_new_tokens)
    return {"digest": digest, "max_new_tokens": args.safety_max_new_tokens, "rates": rates, "answers": answers}


def main(args: argparse.Namespace) -> dict:
    import mlflow

    started = time.perf_counter()
    scoring = evaluation.prepare(
        args.validation_data, args.base_model, args.max_seq_length, args.num_generation_samples
    )
    here = Path(__file__).resolve().parent  # a bad safety set fails here, before the slow part
    prompts = safety_eval.load_set(safety_eval.find_set(args.safety_data, here)) if args.safety_check else None
    print(f"score_base: scoring {args.base_model} on {len(scoring.chats)} validation chats", flush=True)
    model = evaluation.load_model(str(args.base_model))
    metrics, answers = evaluation.score_and_answer(model, scoring, args.max_new_tokens, args.batch_size)
    safety = _measure_safety(model, scoring.tokenizer, prompts, args)
    score = {
        "base_model": str(args.base_model),
        "validation_chats": len(scoring.chats),
        "metrics": metrics,
        "answers": answers,
        "safety": safety,
        "digest": evaluation.scoring_digest(scoring, args.max_new_tokens, safety["digest"] if safety else None),
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.base_score)
    out.mkdir(parents=True, exist_ok=True)
    (out / evaluation.BASE_SCORE).write_text(json.dumps(score, indent=2) + "\n", encoding="utf-8")
    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in vars(args).items() if k != "base_score"})
        measured = metrics | (safety["rates"] if safety else {})
        mlflow.log_metrics({f"base_{k}": float(v) for k, v in measured.items()} | {"seconds": score["seconds"]})
    shown = {k: v for k, v in score.items() if k not in ("answers", "safety")}
    print(json.dumps(shown | {"safety": safety and safety["rates"]}, indent=2), flush=True)
    return score


if __name__ == "__main__":
    exit_on_error("score_base", main, parse_args())
