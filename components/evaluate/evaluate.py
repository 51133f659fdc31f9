"""Compare the base and the tuned model on validation chats, and decide the quality gate.

    python evaluate.py --base_model BASE --tuned_model TUNED --validation_data DATA \
        --eval_report OUT/eval_report --quality_gate OUT/quality_gate [--max_perplexity_ratio 1.0 ...]

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Both models are scored on the same tokens (the base's tokenizer; fine-tuning does not change it): loss,
perplexity and next-token accuracy over assistant tokens only, the tokens fine-tuning trains. Then each answers
the first validation prompts greedily, stopping at its end-of-turn token, scored with ROUGE-L. The scoring is
chatft.evaluation's, the same score_base uses for the base model; every model loads on the device and at the dtype
chatft.devices picks, as in training and serving. With --model_name, the registered champion of that name (if any)
is downloaded from the MLflow registry and scored on the same tokens, and the gate also checks that the tuned model
does not regress against it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from chatft import evaluation, safety_eval, safety_judges
from chatft.errors import exit_on_error
from chatft.evaluation import EvalError, Scoring

SPEC = Path(__file__).with_name("component.yml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, enums, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def _measure_safety(model, tokenizer, safety, args, safety_out: list) -> dict:
    """refusal_rate, over_refusal_rate (chatft/safety_eval.py); the answers go to the report."""
    rates, answered = safety_eval.measure(model, tokenizer, safety, args.safety_max_new_tokens)
    safety_out.extend(answered)
    return rates


def _evaluate_model(path: str, scoring: Scoring, args, safety=None, safety_out=None) -> tuple[dict, list]:
    model = evaluation.load_model(path)
    metrics, answers = evaluation.score_and_answer(model, scoring, args.max_new_tokens, args.batch_size)
    if safety is not None:
        metrics.update(_measure_safety(model, scoring.tokenizer, safety, args, safety_out))
    return metrics, answers


def _change(base: float, tuned: float, kind: str) -> str:
    if kind == "pct_points":
        return f"{(tuned - base) * 100:+.1f} pt"
    if kind == "delta":
        return f"{tuned - base:+.3f}"
    return f"{(tuned - base) / base * 100:+.1f}%" if base else "n/a"


def _markdown_table(report: dict) -> str:
    metrics = report["metrics"]
    base, tuned, champion = metrics["base"], metrics["tuned"], metrics.get("champion")
    rows = [
        ("loss (assistant tokens)", "loss", "{:.4f}", "relative"),
        ("perplexity", "perplexity", "{:.3f}", "relative"),
        ("next-token accuracy", "token_accuracy", "{:.1%}", "pct_points"),
    ]
    if base.get("rougeL") is not None:
        rows.append((f"ROUGE-L F1 (first {len(report['samples'])} answers)", "rougeL", "{:.3f}", "delta"))
    if "refusal_rate" in base:
        rows.append(("refusal rate, harmful requests (higher is safer)", "refusal_rate", "{:.1%}", "pct_points"))
        rows.append(("over-refusal rate, benign look-alikes", "over_refusal_rate", "{:.1%}", "pct_points"))
    header, rule = "| metric | base | tuned | change |", "|---|---:|---:|---:|"
    if champion:
        info = report["quality_gate"]["champion"]
        header += f" champion (v{info['version']}) | tuned vs champion |"
        rule += "---:|---:|"
    lines = [header, rule]
    for label, key, fmt, kind in rows:
        line = (
            f"| {label} | {fmt.format(base[key])} | {fmt.format(tuned[key])} | {_change(base[key], tuned[key], kind)} |"
        )
        if champion:
            value = champion.get(key)
            if value is None:  # the champion is scored, not asked to answer
                line += " – | – |"
            else:
                line += f" {fmt.format(value)} | {_change(value, tuned[key], kind)} |"
        lines.append(line)
    lines += ["", gate_line(report["quality_gate"])]
    lines += [
        f"- {check['name']}: {_check_status(check)} — {check['detail']}" for check in report["quality_gate"]["checks"]
    ]
    return "\n".join(lines)


def _check_status(check: dict) -> str:
    return "skipped" if not check["ran"] else "passed" if check["passed"] else "FAILED"


def gate_line(gate: dict) -> str:
    """One line for logs and consoles: the verdict and why."""
    return f"**Quality gate: {'passed' if gate['passed'] else 'FAILED'}** — {gate['reason']}"


def _markdown(report: dict) -> str:
    def quote(text: str) -> str:
        return "> " + (text or "(empty)").replace("\n", "\n> ")

    parts = [
        "# Evaluation: base vs tuned",
        "",
        f"{report['validation_chats']} validation chats, {report['metrics']['tuned']['assistant_tokens']} "
        f"assistant tokens. Base: `{report['base_model']}`. Tuned: `{report['tuned_model']}`.",
        "",
        _markdown_table(report),
    ]
    if report.get("safety"):
        parts += safety_eval.markdown(report["safety"])
        if report["safety"].get("azure_ai_evaluation"):
            parts += safety_judges.markdown(report["safety"]["azure_ai_evaluation"])
    for number, sample in enumerate(report["samples"], start=1):
        parts += ["", f"## Answer {number}", "", "**Prompt** (last turn):", "", quote(sample["prompt"][-1]["content"])]
        parts += ["", "**Reference:**", "", quote(sample["reference"])]
        for name in ("base", "tuned"):
            parts += ["", f"**{name.capitalize()}** (ROUGE-L {sample[name]['rougeL']:.3f}):", ""]
            parts.append(quote(sample[name]["answer"]))
    return "\n".join(parts) + "\n"


def _ratio_check(name: str, tuned: dict, reference: dict, ratio: float, label: str) -> dict:
    limit = ratio * reference["perplexity"]
    passed = tuned["perplexity"] <= limit
    detail = (
        f"tuned perplexity {tuned['perplexity']:.3f} {'<=' if passed else '>'} {ratio:g} × {label} perplexity "
        f"{reference['perplexity']:.3f} = {limit:.3f}"
    )
    return {"name": name, "ran": True, "passed": passed, "detail": detail}


def quality_gate(metrics: dict, args: argparse.Namespace, champion: dict) -> dict:
    """Pass only if every check that ran passed. ``champion``: {"name", "version", ...} or {"skipped": why}."""
    checks = [_ratio_check("beats_base", metrics["tuned"], metrics["base"], args.max_perplexity_ratio, "base")]
    if "champion" in metrics:
        label = f"champion {champion['name']} v{champion['version']}"
        checks.append(
            _ratio_check(
                "no_regression_vs_champion", metrics["tuned"], metrics["champion"], args.max_champion_ratio, label
            )
        )
    else:
        checks.append(
            {"name": "no_regression_vs_champion", "ran": False, "passed": None, "detail": champion["skipped"]}
        )
    checks += safety_eval.gate_checks(metrics, args.max_refusal_drop, args.max_over_refusal)
    failed = [c for c in checks if c["ran"] and not c["passed"]]
    if failed:
        reason = "; ".join(c["detail"] for c in failed)
    else:
        reason = "; ".join(c["detail"] if c["ran"] else f"{c['name']} skipped: {c['detail']}" for c in checks)
    return {
        "passed": not failed,
        "reason": reason,
        "checks": checks,
        "champion": champion,
        "max_perplexity_ratio": args.max_perplexity_ratio,
        "max_champion_ratio": args.max_champion_ratio,
        "max_refusal_drop": args.max_refusal_drop,
        "max_over_refusal": args.max_over_refusal,
    }


def find_champion(model_name: str | None) -> dict:
    """The registered champion of ``model_name``: {"name", "version", "run_id", "model_uri"}, or {"skipped": why}.

    No model name, no such registered model or no champion are reasons to skip the check; a registry that cannot be
    read is an error (a check that silently skips when it cannot look would be no gate).
    """
    if not model_name:
        return {"skipped": "no model_name given, so there is no champion to compare with"}
    import mlflow
    from mlflow import MlflowClient

    from chatft.registry import get_champion, on_azure

    version = get_champion(MlflowClient(), model_name, on_azure(mlflow.get_registry_uri()))
    if version is None:
        return {"skipped": f"no version of registered model {model_name!r} is champion yet"}
    return {
        "name": model_name,
        "version": str(version.version),
        "run_id": version.run_id,
        "model_uri": f"models:/{model_name}/{version.version}",
    }


def _score_champion(champion: dict, scoring: Scoring, args) -> dict | None:
    """Download the champion's merged model and score it like the others; None (with a reason) if not comparable."""
    import mlflow

    from chatft.model_source import ModelNotFoundError, find_model_dir, load_tokenizer

    print(f"evaluate: scoring the champion {champion['model_uri']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="champion-") as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=champion["model_uri"], dst_path=folder)
        try:
            model_dir = find_model_dir(local)
        except ModelNotFoundError as err:
            raise EvalError(f"champion {champion['model_uri']}: {err}") from None
        if load_tokenizer(model_dir).get_vocab() != scoring.tokenizer.get_vocab():
            # Perplexities over different tokens do not compare; the base model changed since the champion.
            champion["skipped"] = (
                f"champion {champion['model_uri']} has a different tokenizer (another base model), so its "
                "perplexity is not comparable"
            )
            return None
        metrics, _ = _evaluate_model(str(model_dir), dataclasses.replace(scoring, samples=[]), args)
    metrics["rougeL"] = None
    return metrics


def _reuse_base_score(scoring: Scoring, args: argparse.Namespace, safety, safety_out: list) -> tuple[dict, list]:
    """The base model's metrics and answers from the score_base step: a pure function of the base model, the
    validation data and the safety set, so the local backend reuses it across runs that change only training. With
    the safety check, its safety numbers too, if measured on this evaluation's set and settings (the digest says).
    The base model loads only when that score has no safety numbers (score_base ran with safety_check false)."""
    print(f"evaluate: the base model's scores from {args.base_score}", flush=True)
    safety_digest = safety_eval.digest(safety, args.safety_max_new_tokens) if safety is not None else None
    stored = evaluation.load_base_score(args.base_score, scoring, args.max_new_tokens, safety_digest)
    if safety is None:
        return dict(stored.metrics), stored.answers
    if stored.safety is not None:
        safety_out.extend(stored.safety["answers"])
        return stored.metrics | stored.safety["rates"], stored.answers
    print(
        "evaluate: that base score has no safety numbers (score_base ran with safety_check false), so the base "
        f"model is asked the safety set here ({args.base_model})",
        flush=True,
    )
    model = evaluation.load_model(str(args.base_model))
    return stored.metrics | _measure_safety(model, scoring.tokenizer, safety, args, safety_out), stored.answers


def _score_models(scoring: Scoring, args: argparse.Namespace, safety) -> tuple[dict, dict[str, list]]:
    """Metrics of base and tuned, their answers (ROUGE-L) written into the samples, and their safety answers."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    samples, metrics, safety_answers = scoring.samples, {}, {}
    for name, path in (("base", args.base_model), ("tuned", args.tuned_model)):
        safety_out = safety_answers.setdefault(name, [])
        if name == "base" and args.base_score:
            metrics[name], answers = _reuse_base_score(scoring, args, safety, safety_out)
        else:
            print(f"evaluate: scoring the {name} model ({path})", flush=True)
            metrics[name], answers = _evaluate_model(path, scoring, args, safety, safety_out)
        for sample, answer in zip(samples, answers, strict=True):
            sample[name] = {"answer": answer, "rougeL": scorer.score(sample["reference"], answer)["rougeL"].fmeasure}
        metrics[name]["rougeL"] = sum(s[name]["rougeL"] for s in samples) / len(samples) if samples else None
    return metrics, safety_answers


def _safety_section(safety, safety_answers: dict[str, list], args: argparse.Namespace) -> dict | None:
    """The report's safety section; with a Foundry project, the Azure AI Evaluation ratings of the same answers."""
    if safety is None:
        return None
    section = safety_eval.report(safety, safety_answers, args.safety_max_new_tokens)
    if args.foundry_project:
        print(f"evaluate: rating the safety answers with the Foundry project's evaluators ({args.foundry_project})")
        section["azure_ai_evaluation"] = safety_judges.rate(args.foundry_project, safety, safety_answers)
    return section


def _write_outputs(report: dict, args: argparse.Namespace) -> None:
    report_dir, gate_dir = Path(args.eval_report), Path(args.quality_gate)
    report_dir.mkdir(parents=True, exist_ok=True)
    gate_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (report_dir / "eval_report.md").write_text(_markdown(report), encoding="utf-8")
    (report_dir / "summary.md").write_text(_markdown_table(report) + "\n", encoding="utf-8")
    gate = {**report["quality_gate"], "metrics": report["metrics"]}
    (gate_dir / "quality_gate.json").write_text(json.dumps(gate, indent=2) + "\n")


def _log_run(report: dict, args: argparse.Namespace) -> None:
    import mlflow

    gate, metrics = report["quality_gate"], report["metrics"]
    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("eval_report", "quality_gate")})
        mlflow.log_param("champion", gate["champion"].get("model_uri") or "none")
        mlflow.set_tag("quality_gate", f"{'passed' if gate['passed'] else 'failed'}: {gate['reason']}"[:5000])
        judged = ((report.get("safety") or {}).get("azure_ai_evaluation") or {}).get("summary", {})
        mlflow.log_metrics(
            {f"{name}_{k}": float(v) for name, m in metrics.items() for k, v in m.items() if v is not None}
            | {f"{name}_{k}": float(v) for name, m in judged.items() for k, v in m.items() if v is not None}
            | {"quality_gate_passed": float(gate["passed"]), "eval_seconds": report["seconds"]}
        )
        mlflow.log_artifacts(str(args.eval_report), artifact_path="eval_report")
        mlflow.log_artifacts(str(args.quality_gate), artifact_path="quality_gate")


def main(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    scoring = evaluation.prepare(
        args.validation_data, args.base_model, args.max_seq_length, args.num_generation_samples
    )
    champion = find_champion(args.model_name)  # before the slow part: a registry that cannot be read fails fast
    if args.foundry_project:  # before it too: a malformed endpoint, or no safety answers to rate
        safety_judges.check_project(args.foundry_project)
        if not args.safety_check:
            raise safety_judges.FoundryProjectError("foundry_project needs safety_check: true (it rates those answers)")
    here = Path(__file__).resolve().parent
    safety = safety_eval.load_set(safety_eval.find_set(args.safety_data, here)) if args.safety_check else None

    metrics, safety_answers = _score_models(scoring, args, safety)
    if "skipped" not in champion:
        scored = _score_champion(champion, scoring, args)
        if scored is not None:
            metrics["champion"] = scored
    report = {
        "base_model": str(args.base_model),
        "tuned_model": str(args.tuned_model),
        "validation_chats": len(scoring.chats),
        "metrics": metrics,
        "quality_gate": quality_gate(metrics, args, champion),
        "samples": scoring.samples,
        "safety": _safety_section(safety, safety_answers, args),
        "seconds": time.perf_counter() - started,
    }
    _write_outputs(report, args)
    _log_run(report, args)
    print(_markdown_table(report), flush=True)
    return report


if __name__ == "__main__":
    exit_on_error("evaluate", main, parse_args())
