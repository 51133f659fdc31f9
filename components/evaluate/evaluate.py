"""Compare the base and the tuned model on validation chats, and decide the quality gate.

    python evaluate.py --base_model BASE --tuned_model TUNED --validation_data DATA \
        --eval_report OUT/eval_report --quality_gate OUT/quality_gate [--max_perplexity_ratio 1.0 ...]

Every flag, its type, range and default is read from component.yml beside this file (`--help` lists them).
Both models are scored on the same tokens (the base's tokenizer; fine-tuning does not change it): loss,
perplexity and next-token accuracy over assistant tokens only, the tokens fine-tuning trains. Then each answers
the first validation prompts greedily, stopping at its end-of-turn token, scored with ROUGE-L. With --model_name,
the registered champion of that name (if any) is downloaded from the MLflow registry and scored on the same
tokens, and the gate also checks that the tuned model does not regress against it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from chatft import safety_eval
from chatft.errors import UsageError

SPEC = Path(__file__).with_name("component.yml")
# The shipped safety set: beside this script in a snapshot (additional_includes), else data/safety/ in the repository.
SAFETY_SET = ("safety", "../../data/safety")


class EvalError(UsageError, ValueError):
    """Inputs that cannot be evaluated; the message says where and what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags named like the spec's inputs/outputs; types, enums, ranges and defaults come from the spec."""
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC).parse_args(argv)


def _load_chats(folder: str) -> list[list[dict]]:
    """The message lists of every .jsonl file under ``folder`` (validated upstream by validate_chat_jsonl)."""
    from chatft.jsonl_io import NoJsonlFilesError, is_blank, iter_lines, list_jsonl_files

    try:
        files = list_jsonl_files(folder)
    except NoJsonlFilesError as err:
        raise EvalError(f"validation_data: {err}") from None
    chats = []
    for file in files:
        for number, line in iter_lines(file.path):
            if is_blank(line):
                continue
            try:
                chats.append(json.loads(line)["messages"])
            except (ValueError, KeyError, TypeError) as err:
                raise EvalError(f'{file.path}:{number}: not a {{"messages": [...]}} JSON line ({err})') from None
    return chats


def _encode(tokenizer, chats: list[list[dict]], max_seq_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and assistant mask per chat, rendered exactly as fine-tuning renders them."""
    from chatft.model_source import training_chat_template

    template = training_chat_template(tokenizer)
    encoded = []
    for messages in chats:
        out = tokenizer.apply_chat_template(
            messages, chat_template=template, return_assistant_tokens_mask=True, return_dict=True
        )
        encoded.append((out["input_ids"][:max_seq_length], out["assistant_masks"][:max_seq_length]))
    return encoded


def _score(model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8) -> dict:
    """Token-weighted loss, perplexity and top-1 accuracy over the assistant tokens of every chat.

    Chats go through in batches of similar length (sorted, right-padded: a causal model's real positions never
    see the padding after them), and the LM head projects only the assistant positions, the way finetune's CPU
    step does: on SmolLM2 its 49k-word head is a large part of the work, and most positions carry no score.
    """
    import torch

    nll, correct, count = 0.0, 0, 0
    order = sorted((i for i, (_, mask) in enumerate(encoded) if any(mask[1:])), key=lambda i: len(encoded[i][0]))
    body, head = model.base_model, model.get_output_embeddings()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.zeros((len(rows), width), dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            targets = torch.zeros((len(rows), width - 1), dtype=torch.bool)
            for row, (ids, mask) in enumerate(rows):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
                targets[row, : len(ids) - 1] = torch.tensor(mask[1:], dtype=torch.bool)
            input_ids, attention, targets = (t.to(model.device) for t in (input_ids, attention, targets))
            hidden = body(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
            logits = head(hidden[:, :-1][targets]).float()
            labels = input_ids[:, 1:][targets]
            nll += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            count += int(targets.sum())
    if count == 0:
        raise EvalError("validation_data: no assistant tokens to score (do the chats have assistant turns?)")
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": correct / count, "assistant_tokens": count}


def _samples(chats: list[list[dict]], n: int) -> list[dict]:
    """The first ``n`` chats as (prompt: everything before the last assistant turn, reference: that turn).

    A turn with weight 0 is one the data says not to learn from, so it is no reference either."""
    samples = []
    for messages in chats[:n]:
        trained = (i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight") != 0)
        last = max(trained, default=None)
        if last:  # an assistant turn with something before it to answer
            samples.append({"prompt": messages[:last], "reference": messages[last]["content"]})
    return samples


def _generate(model, tokenizer, samples: list[dict], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers, ``batch_size`` prompts per left-padded generate() call, each row stopping at its own end
    of turn (the same stop ids as the endpoint's score.py)."""
    import torch

    from chatft.model_source import stop_token_ids

    stop = stop_token_ids(tokenizer, model)
    answers = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            prompts = [
                tokenizer.apply_chat_template(s["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
                for s in samples[start : start + batch_size]
            ]
            width = max(len(ids) for ids in prompts)
            # Left padding: every row's next token lands in the same column; the mask hides the padding.
            input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(prompts), width), dtype=torch.long)
            for row, ids in enumerate(prompts):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in output[:, width:].tolist():
                # A row that stopped early is filled with padding: cut at its first stop token.
                end = next((i for i, token in enumerate(row) if token in stop), len(row))
                answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return answers


def _load_model(path: str):
    from chatft.devices import inference_dtype, pick_device
    from chatft.model_source import load_causal_lm

    device = pick_device()  # the one device policy (chatft/devices.py), as finetune and the endpoint use it
    return load_causal_lm(path, dtype=inference_dtype(device)).to(device).eval()


def _evaluate_model(path: str, tokenizer, encoded, samples, args, safety=None, safety_out=None) -> tuple[dict, list]:
    model = _load_model(path)
    metrics = _score(model, encoded, args.batch_size)
    answers = _generate(model, tokenizer, samples, args.max_new_tokens, args.batch_size)
    if safety is not None:
        metrics.update(_measure_safety(model, tokenizer, safety, args, safety_out))
    return metrics, answers


def _measure_safety(model, tokenizer, safety, args, safety_out: list) -> dict:
    """refusal_rate, over_refusal_rate (chatft/safety_eval.py); the answers go to the report."""
    rates, answered = safety_eval.measure(model, tokenizer, safety, args.safety_max_new_tokens)
    safety_out.extend(answered)
    return rates


def scoring_digest(encoded, samples, args) -> str:
    """What a base score depends on besides the model: the scored tokens, the prompts and the generation length.
    score_base records it; evaluate refuses a base score whose digest is not its own."""
    import hashlib

    material = {
        "encoded": encoded,
        "prompts": [s["prompt"] for s in samples],
        "max_new_tokens": args.max_new_tokens,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def load_base_score(folder: str, digest: str) -> tuple[dict, list[str]]:
    """The base model's metrics and answers from score_base's output, if it scored exactly what evaluate would."""
    path = Path(folder) / "base_score.json"
    if not path.is_file():
        raise EvalError(f"base_score: {path} not found (the base_score output of the score_base step)")
    score = json.loads(path.read_text(encoding="utf-8"))
    if score.get("digest") != digest:
        raise EvalError(
            f"base_score: {path} was computed on other validation chats, max_seq_length or generation settings "
            "than this evaluation's; run score_base with the same inputs (the pipeline passes evaluate's)"
        )
    return score["metrics"], score["answers"]


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


def _score_champion(champion: dict, tokenizer, encoded, args) -> dict | None:
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
        if load_tokenizer(model_dir).get_vocab() != tokenizer.get_vocab():
            # Perplexities over different tokens do not compare; the base model changed since the champion.
            champion["skipped"] = (
                f"champion {champion['model_uri']} has a different tokenizer (another base model), so its "
                "perplexity is not comparable"
            )
            return None
        metrics, _ = _evaluate_model(str(model_dir), tokenizer, encoded, [], args)
    metrics["rougeL"] = None
    return metrics


def _safety_set(args: argparse.Namespace) -> Path:
    if args.safety_data:
        return Path(args.safety_data)
    here = Path(__file__).resolve().parent
    found = next((here / p for p in SAFETY_SET if (here / p).is_dir()), None)
    if found is None:
        raise EvalError(f"the shipped safety set is not beside {here} (additional_includes of component.yml)")
    return found


def main(args: argparse.Namespace) -> dict:
    import mlflow
    from rouge_score import rouge_scorer

    from chatft.model_source import load_tokenizer

    started = time.perf_counter()
    chats = _load_chats(args.validation_data)
    tokenizer = load_tokenizer(args.base_model)
    encoded = _encode(tokenizer, chats, args.max_seq_length)
    samples = _samples(chats, args.num_generation_samples)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    champion = find_champion(args.model_name)  # before the slow part: a registry that cannot be read fails fast
    safety = safety_eval.load_set(_safety_set(args)) if args.safety_check else None
    safety_answers: dict[str, list] = {}
    metrics = {}
    for name, path in (("base", args.base_model), ("tuned", args.tuned_model)):
        if name == "base" and args.base_score:
            # A pure function of the base model and the validation data: the score_base step computed it (and the
            # local backend reuses it across runs that change only training). The safety set is not in that score:
            # it is measured here.
            print(f"evaluate: the base model's scores from {args.base_score}", flush=True)
            metrics[name], answers = load_base_score(args.base_score, scoring_digest(encoded, samples, args))
            if safety is not None:
                rates = _measure_safety(_load_model(path), tokenizer, safety, args, safety_answers.setdefault(name, []))
                metrics[name] = {**metrics[name], **rates}
        else:
            print(f"evaluate: scoring the {name} model ({path})", flush=True)
            metrics[name], answers = _evaluate_model(
                path, tokenizer, encoded, samples, args, safety, safety_answers.setdefault(name, [])
            )
        for sample, answer in zip(samples, answers, strict=True):
            sample[name] = {"answer": answer, "rougeL": scorer.score(sample["reference"], answer)["rougeL"].fmeasure}
        metrics[name]["rougeL"] = sum(s[name]["rougeL"] for s in samples) / len(samples) if samples else None
    if "skipped" not in champion:
        scored = _score_champion(champion, tokenizer, encoded, args)
        if scored is not None:
            metrics["champion"] = scored

    gate = quality_gate(metrics, args, champion)
    report = {
        "base_model": str(args.base_model),
        "tuned_model": str(args.tuned_model),
        "validation_chats": len(chats),
        "metrics": metrics,
        "quality_gate": gate,
        "samples": samples,
        "safety": safety_eval.report(safety, safety_answers, args.safety_max_new_tokens) if safety else None,
        "seconds": time.perf_counter() - started,
    }
    report_dir, gate_dir = Path(args.eval_report), Path(args.quality_gate)
    report_dir.mkdir(parents=True, exist_ok=True)
    gate_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (report_dir / "eval_report.md").write_text(_markdown(report), encoding="utf-8")
    (report_dir / "summary.md").write_text(_markdown_table(report) + "\n", encoding="utf-8")
    (gate_dir / "quality_gate.json").write_text(json.dumps({**gate, "metrics": metrics}, indent=2) + "\n")

    with mlflow.start_run():
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("eval_report", "quality_gate")})
        mlflow.log_param("champion", champion.get("model_uri") or "none")
        mlflow.set_tag("quality_gate", f"{'passed' if gate['passed'] else 'failed'}: {gate['reason']}"[:5000])
        mlflow.log_metrics(
            {f"{name}_{k}": float(v) for name, m in metrics.items() for k, v in m.items() if v is not None}
            | {"quality_gate_passed": float(gate["passed"]), "eval_seconds": report["seconds"]}
        )
        mlflow.log_artifacts(str(report_dir), artifact_path="eval_report")
        mlflow.log_artifacts(str(gate_dir), artifact_path="quality_gate")
    print(_markdown_table(report), flush=True)
    return report


if __name__ == "__main__":
    try:
        main(parse_args())
    except EvalError as err:
        sys.exit(f"evaluate: {err}")
