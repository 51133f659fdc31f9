"""Training tokens for the cost estimate: every position through the model, all epochs. In order: ``--tokens``, a
validate step's data report (``--data-report``), the local data (characters / 4: an approximation, said so), or, for
a Hugging Face dataset, its split size in infra/pricing.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from chatft.data import read_local_records
from pipelines.preflight.inputs import PRICING_FILE, PreflightError, setting
from pipelines.settings import PROJECT_ROOT, RunSettings


@dataclass(frozen=True)
class TokenEstimate:
    processed: int  # token positions that go through forward and backward, all epochs: what the GPU time is for
    basis: str  # how the number was obtained, printed with it


def _training_passes(settings: RunSettings, per_epoch: int) -> tuple[int, str]:
    """Processed tokens from tokens per epoch: num_train_epochs, or max_steps of packed rows when that is set."""
    max_steps = int(setting(settings, "finetune", "max_steps"))
    if max_steps > 0:
        batch = int(setting(settings, "finetune", "per_device_train_batch_size"))
        accumulation = int(setting(settings, "finetune", "gradient_accumulation_steps"))
        length = int(setting(settings, "finetune", "max_seq_length"))
        return max_steps * batch * accumulation * length, f"max_steps {max_steps} x {batch}x{accumulation} rows"
    epochs = float(setting(settings, "finetune", "num_train_epochs"))
    return round(per_epoch * epochs), f"{epochs:g} epoch(s)"


def _tokens_from_report(path: Path) -> int:
    """Tokens per epoch from a validate step's report: processed_per_epoch (every position that goes through the
    model after truncation, what compute costs), else trained_per_epoch (the loss tokens: an undercount)."""
    try:
        tokens = json.loads(Path(path).read_text(encoding="utf-8"))["tokens"]
        value = tokens.get("processed_per_epoch", tokens.get("trained_per_epoch"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise PreflightError(f"--data-report {path}: expected a validate step's data_report.json ({err})") from None
    if value is None:
        raise PreflightError(
            f"--data-report {path}: the report has no token counts (tokens.counted_with is "
            f"{tokens.get('counted_with')!r}: validate ran without a tokenizer); pass --tokens N instead"
        )
    return int(value)


def _tokens_from_local_data(path: Path, settings: RunSettings, assumptions: dict) -> tuple[int, int]:
    """(train tokens per epoch, records): content characters / chars_per_token + template tokens, capped per chat at
    max_seq_length, times the train share of the split."""
    try:
        source = read_local_records(path)
    except FileNotFoundError as err:  # NoJsonlFilesError included
        raise PreflightError(f"training data: {err}") from None
    chars_per_token = float(assumptions["chars_per_token"])
    per_message = int(assumptions["template_tokens_per_message"])
    max_length = int(setting(settings, "finetune", "max_seq_length"))
    total = 0
    for record in source.records:
        try:
            messages = json.loads(record)["messages"]
            chars = sum(len(str(message.get("content") or "")) for message in messages)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # validate_chat_jsonl rejects it; it is never trained on
        total += min(max_length, math.ceil(chars / chars_per_token) + per_message * len(messages))
    train_share = 1.0 - float(setting(settings, "prep_data", "validation_fraction"))
    return round(total * train_share), len(source.records)


def _tokens_from_hf(settings: RunSettings, pricing: dict) -> tuple[int, str]:
    import datasets

    prep = settings.step("prep_data")
    name, split = prep["hf_dataset"], str(setting(settings, "prep_data", "hf_split"))
    known = pricing["hf_datasets"].get(name)
    if not known:
        raise PreflightError(
            f"no size known for Hugging Face dataset {name}: pass --tokens N (training tokens), or add it to "
            f"hf_datasets in {PRICING_FILE.relative_to(PROJECT_ROOT)} or a --pricing file"
        )
    try:
        spans = datasets.ReadInstruction.from_spec(split).to_absolute(known["rows"])
    except (ValueError, AssertionError) as err:
        raise PreflightError(f"steps.prep_data.hf_split {split!r}: {err}") from None
    rows = sum(span.to - span.from_ for span in spans)
    max_length = int(setting(settings, "finetune", "max_seq_length"))
    per_row = min(int(known["tokens_per_row"]), max_length)
    train_share = 1.0 - float(setting(settings, "prep_data", "validation_fraction"))
    return round(rows * per_row * train_share), f"{rows:,} rows of {name} [{split}] x {per_row:,} tokens/row (assumed)"


def estimate_tokens(
    settings: RunSettings,
    local_data: Path | None,
    pricing: dict,
    tokens: int | None = None,
    data_report: Path | None = None,
) -> TokenEstimate:
    if tokens is not None:
        if tokens <= 0:
            raise PreflightError(f"--tokens {tokens}: must be a positive number of training tokens")
        return TokenEstimate(tokens, "given with --tokens")
    if data_report is not None:
        per_epoch = _tokens_from_report(data_report)
        processed, passes = _training_passes(settings, per_epoch)
        return TokenEstimate(processed, f"{per_epoch:,} tokens/epoch counted in {data_report} x {passes}")
    if local_data is not None:
        per_epoch, records = _tokens_from_local_data(local_data, settings, pricing["tokens"])
        processed, passes = _training_passes(settings, per_epoch)
        rule = f"characters / {pricing['tokens']['chars_per_token']:g}"
        return TokenEstimate(processed, f"{records:,} local records, train share, {rule} (approximation) x {passes}")
    if settings.step("prep_data").get("hf_dataset"):
        per_epoch, basis = _tokens_from_hf(settings, pricing)
        processed, passes = _training_passes(settings, per_epoch)
        return TokenEstimate(processed, f"{basis}, train share x {passes}")
    raise PreflightError("no training data to estimate tokens from: pass --data PATH or --tokens N")
