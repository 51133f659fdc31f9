"""How a model is measured on validation chats: the scoring evaluate and score_base share.

Loss, perplexity and next-token accuracy over assistant tokens only (the tokens fine-tuning trains), rendered
exactly as fine-tuning renders them; greedy answers to the first validation prompts, each stopping at its
end-of-turn token; and the digest of what was scored, so that a base score computed by score_base is used by
evaluate only when it measured the same tokens and prompts. Models load through ``chatft.devices``, the one
device/dtype policy training and serving use too.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from chatft.errors import UsageError

BASE_SCORE = "base_score.json"  # score_base's output file, read by evaluate


class EvalError(UsageError, ValueError):
    """Inputs that cannot be evaluated; the message says where and what to do."""


@dataclass
class Scoring:
    """What both models are measured on: the validation chats, their tokens (the base's tokenizer; fine-tuning
    does not change it) and the prompts answered greedily."""

    chats: list[list[dict]]
    tokenizer: object
    encoded: list[tuple[list[int], list[int]]]
    samples: list[dict]


def prepare(validation_data: str, base_model: str, max_seq_length: int, num_generation_samples: int) -> Scoring:
    """Read the chats, tokenize them with the base model's tokenizer and pick the prompts to answer."""
    from chatft.model_source import load_tokenizer

    chats = load_chats(validation_data)
    tokenizer = load_tokenizer(base_model)
    return Scoring(chats, tokenizer, encode(tokenizer, chats, max_seq_length), samples(chats, num_generation_samples))


def load_chats(folder: str) -> list[list[dict]]:
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


def encode(tokenizer, chats: list[list[dict]], max_seq_length: int) -> list[tuple[list[int], list[int]]]:
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


def samples(chats: list[list[dict]], n: int) -> list[dict]:
    """The first ``n`` chats as (prompt: everything before the last assistant turn, reference: that turn).

    A turn with weight 0 is one the data says not to learn from, so it is no reference either."""
    found = []
    for messages in chats[:n]:
        trained = (i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight") != 0)
        last = max(trained, default=None)
        if last:  # an assistant turn with something before it to answer
            found.append({"prompt": messages[:last], "reference": messages[last]["content"]})
    return found


def load_model(path: str):
    """The model at ``path`` for scoring: on the device and at the dtype of the one policy (chatft.devices)."""
    from chatft.devices import inference_dtype, pick_device
    from chatft.model_source import load_causal_lm

    device = pick_device()
    return load_causal_lm(path, dtype=inference_dtype(device)).to(device).eval()


def score(model, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8) -> dict:
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


def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy answers to the message lists ``prompts``, ``batch_size`` per left-padded generate() call, each row
    stopping at its own end of turn (the endpoint's stop ids)."""
    import torch

    from chatft.model_source import stop_token_ids

    stop = stop_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    answers = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            rows = [
                list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
                for messages in prompts[start : start + batch_size]
            ]
            width = max(len(ids) for ids in rows)
            # Left padding: every row's next token lands in the same column; the mask hides the padding.
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for row, ids in enumerate(rows):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention[row, width - len(ids) :] = 1
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=pad,
            )
            for row in output[:, width:].tolist():
                # A row that stopped early is filled with padding: cut at its first stop token.
                end = next((i for i, token in enumerate(row) if token in stop), len(row))
                answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return answers


def score_and_answer(model, scoring: Scoring, max_new_tokens: int, batch_size: int) -> tuple[dict, list[str]]:
    """The model's metrics on the scored tokens and its greedy answers to the sample prompts."""
    metrics = score(model, scoring.encoded, batch_size)
    prompts = [s["prompt"] for s in scoring.samples]
    return metrics, greedy_answers(model, scoring.tokenizer, prompts, max_new_tokens, batch_size)


def scoring_digest(scoring: Scoring, max_new_tokens: int, safety_digest: str | None = None) -> str:
    """What a base score depends on besides the model: the scored tokens, the prompts and the generation length,
    and, when the score holds the base model's safety numbers, their own digest (chatft.safety_eval.digest: the
    safety set and its settings). score_base records it; evaluate refuses a base score whose digest is not its own.
    Without safety the material is what it was before safety moved into score_base, so the digest is too."""
    material = {
        "encoded": scoring.encoded,
        "prompts": [s["prompt"] for s in scoring.samples],
        "max_new_tokens": max_new_tokens,
    }
    if safety_digest is not None:
        material["safety"] = safety_digest
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


@dataclass
class BaseScore:
    """The base model's half of an evaluation, as score_base measured it."""

    metrics: dict
    answers: list[str]
    # {"digest", "max_new_tokens", "rates": {"refusal_rate", "over_refusal_rate"}, "answers": [...]}; None when
    # score_base did not measure safety, or when the caller did not ask for it.
    safety: dict | None


def load_base_score(folder: str, scoring: Scoring, max_new_tokens: int, safety_digest: str | None = None) -> BaseScore:
    """The base model's metrics and answers from score_base's output, if it scored exactly what evaluate would; with
    ``safety_digest`` (evaluate's safety set and settings), also its safety numbers, if measured on exactly those."""
    path = Path(folder) / BASE_SCORE
    if not path.is_file():
        raise EvalError(f"base_score: {path} not found (the base_score output of the score_base step)")
    found = json.loads(path.read_text(encoding="utf-8"))
    safety = found.get("safety")
    if found.get("digest") != scoring_digest(scoring, max_new_tokens, safety["digest"] if safety else None):
        raise EvalError(
            f"base_score: {path} was computed on other validation chats, max_seq_length or generation settings "
            "than this evaluation's; run score_base with the same inputs (the pipeline passes evaluate's)"
        )
    if safety_digest is None or safety is None:
        return BaseScore(found["metrics"], found["answers"], None)
    if safety["digest"] != safety_digest:
        raise EvalError(
            f"base_score: {path} measured the base model's safety on another safety set, safety_max_new_tokens or "
            "refusal phrases than this evaluation's; run score_base with the same safety inputs (the pipeline "
            "passes evaluate's)"
        )
    return BaseScore(found["metrics"], found["answers"], safety)
