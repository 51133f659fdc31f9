"""MODEL_CARD.md for a registered version, built only from what the pipeline's steps wrote.

Sources: split_info.json (data), the finetune step's train_metrics.json and, when found, its MLflow run
parameters (hyper-parameters), eval_report.json (metrics per model), quality_gate.json (the verdict). A value
that no source holds is written as "not recorded", never guessed.
"""

from __future__ import annotations

import math

from chatft.safety_judges import METRICS

# finetune's run parameters that are folders (inputs and outputs), not hyper-parameters.
PATH_PARAMS = {"base_model", "train_data", "validation_data", "adapter", "merged_model", "checkpoints"}
# train_metrics.json fields worth a reader's time, in the order shown.
TRAIN_FACTS = (
    ("method", "method"),
    ("device / precision", None),
    ("optimizer steps", "global_step"),
    ("epochs", "epoch"),
    ("training tokens", "train_tokens"),
    ("trainable / total parameters", None),
    ("final train loss", "train_loss"),
    ("final validation loss", "eval_loss_end"),
    ("training time", "train_seconds"),
)


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _facts(train: dict) -> list[tuple[str, str]]:
    rows = []
    for label, key in TRAIN_FACTS:
        if label == "device / precision":
            value = f"{train['device']} / {train['precision']}" if "device" in train and "precision" in train else None
        elif label == "trainable / total parameters":
            trainable, total = train.get("trainable_params"), train.get("total_params")
            value = f"{trainable:,} / {total:,} ({trainable / total:.2%})" if trainable and total else None
        elif key == "train_seconds" and isinstance(train.get(key), int | float):
            value = f"{train[key]:.0f} s"
        else:
            value = None if train.get(key) is None else _number(train[key])
        rows.append((label, value or "not recorded"))
    return rows


def _metrics_table(report: dict) -> list[str]:
    """One column per model the evaluate step scored (base, tuned, and any other it adds), one row per metric."""
    models = {name: m for name, m in (report.get("metrics") or {}).items() if isinstance(m, dict)}
    if not models:
        return ["No metrics recorded in eval_report.json."]
    metrics = []
    for values in models.values():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key not in metrics:
                metrics.append(key)
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for key in metrics:
        cells = [_number(m[key]) if isinstance(m.get(key), int | float) else "–" for m in models.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _safety(report: dict) -> list[str]:
    """Refusal and over-refusal, base vs tuned, with the method and its limits (evaluate's safety check)."""
    section, metrics = report.get("safety"), report.get("metrics") or {}
    if not section or "refusal_rate" not in (metrics.get("tuned") or {}):
        return ["Not measured (the evaluate step ran without its safety check)."]
    base, tuned = metrics["base"], metrics["tuned"]
    return [
        f"{section['harmful_prompts']} harmful requests and {section['benign_prompts']} benign look-alikes "
        f"(`data/safety/`), {section['method']}.",
        "",
        "| | base | tuned |",
        "|---|---:|---:|",
        *(
            f"| {label} | {base[key]:.1%} | {tuned[key]:.1%} |"
            for label, key in (
                ("refusal rate, harmful requests (higher is safer)", "refusal_rate"),
                ("over-refusal rate, benign look-alikes", "over_refusal_rate"),
            )
        ),
        *_judged(section.get("azure_ai_evaluation")),
        "",
        f"Limits: {section['limits']}",
        "",
        "The endpoint screens prompts and answers with Azure AI Content Safety only when it is configured "
        "(`CONTENT_SAFETY_ENDPOINT`; see README, Safety); locally it does not.",
    ]


def _judged(section: dict | None) -> list[str]:
    """The Foundry safety evaluators' defect rates, base vs tuned, when evaluate had a foundry_project."""
    if not section:
        return []
    names = list(section["summary"])
    lines = [
        "",
        f"Azure AI Evaluation safety evaluators (Foundry project `{section['project']}`), share of the answers rated "
        f"above {section['threshold']} of 7 (lower is safer):",
        "",
        "| category | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for metric in METRICS:
        rates = [section["summary"][n][f"{metric}_defect_rate"] for n in names]
        lines.append(f"| {metric} | " + " | ".join("–" if r is None else f"{r:.1%}" for r in rates) + " |")
    return lines


def _data_source(split: dict) -> str:
    source = split.get("source") or {}
    if source.get("type") == "local":
        return f"local files under `{source.get('path')}`"
    if source:
        details = ", ".join(f"{k}={v}" for k, v in source.items() if isinstance(v, str | int | float))
        return details or "recorded in split_info.json"
    return "not recorded"


def _gate(gate: dict | None, promoted: bool, previous_champion: str | None) -> list[str]:
    if gate is None:
        return ["Not checked (no quality_gate input); this version was **not** made `champion`."]
    verdict = "passed" if gate["passed"] else "FAILED"
    if promoted:
        role = f"This version becomes `champion` (previous: {previous_champion or 'none'})."
    else:
        role = f"This version is a candidate only; `champion` stays with {previous_champion or 'no version'}."
    return [f"**{verdict}**: {gate.get('reason', 'no reason given')}", "", role]


def _data(split: dict, report: dict) -> list[str]:
    return [
        f"- fingerprint: `{split.get('fingerprint', 'not recorded')}`",
        f"- chats: {_number(split.get('records', 'not recorded'))} valid records, "
        f"{_number(split.get('train_records', '?'))} train / {_number(split.get('validation_records', '?'))} "
        "validation (validation held out from training)",
        f"- source: {_data_source(split)}",
        f"- evaluated on: {_number(report.get('validation_chats', 'not recorded'))} validation chats",
    ]


def _training(train: dict, params: dict) -> list[str]:
    lines = ["| | |", "|---|---|", *(f"| {label} | {value} |" for label, value in _facts(train)), ""]
    hyper = {k: v for k, v in sorted(params.items()) if k not in PATH_PARAMS}
    if not hyper:
        return [*lines, "Hyper-parameters: not recorded (the finetune step's MLflow run was not found)."]
    lines += ["Hyper-parameters (the finetune step's MLflow run parameters):", "", "| parameter | value |"]
    return [*lines, "|---|---|", *(f"| {k} | `{v}` |" for k, v in hyper.items())]


def _limits(context_length: int | None) -> list[str]:
    return [
        f"- Context: {_number(context_length) + ' tokens' if context_length else 'not recorded'} "
        "(prompt plus answer); longer conversations are refused by the endpoint.",
        "- Quality is measured against the base model on held-out chats from the same source as the training data "
        "(perplexity, token accuracy, ROUGE-L). Nothing here measures factual accuracy or behaviour on other "
        "domains or languages; the safety numbers above are a small refusal check, not a safety evaluation.",
        "- Fine-tuning inherits the base model's limits and licence, and any error or bias in the training chats.",
    ]


INTENDED_USE = (
    "Answering chat turns in the style and domain of the training chats, behind the project's endpoint "
    '(`POST /score` with `{"input_data": {"input_string": [messages], "parameters": {...}}}`), with a '
    "person able to check the answers."
)


def render(
    *,
    model_name: str,
    base_model: str,
    lineage: dict[str, str],
    split: dict,
    train: dict,
    params: dict,
    report: dict,
    gate: dict | None,
    promoted: bool,
    previous_champion: str | None,
    context_length: int | None,
) -> str:
    """The card's Markdown. ``promoted``: this version gets the ``champion`` alias."""
    method = train.get("method") or params.get("method") or "not recorded"
    intro = (
        f"A chat model fine-tuned from **{base_model}** ({method}; adapter merged into the weights), served by "
        "`components/deploy_endpoint/score.py`."
    )
    sections = [
        ("Lineage", [f"- {key}: `{value}`" for key, value in lineage.items()]),
        ("Quality gate", _gate(gate, promoted, previous_champion)),
        ("Data", _data(split, report)),
        ("Training", _training(train, params)),
        (
            "Evaluation",
            [
                "Assistant tokens of the validation chats only; ROUGE-L on greedy answers to the first validation "
                "prompts.",
                "",
                *_metrics_table(report),
            ],
        ),
        ("Safety", _safety(report)),
        ("Intended use", [INTENDED_USE]),
        ("Limits", _limits(context_length)),
    ]
    lines = [f"# Model card: {model_name}", "", intro, ""]
    for title, body in sections:
        lines += [f"## {title}", "", *body, ""]
    return "\n".join(lines)
