"""The chats to train on: every .jsonl file of an input folder, with ``weight: 0`` turns honoured."""

from __future__ import annotations

from chatft.training.config import ConfigError


def load_chats(folder: str | None, input_name: str):
    """The chats of every .jsonl file under ``folder`` (validated upstream by validate_chat_jsonl)."""
    from datasets import load_dataset

    from chatft.jsonl_io import NoJsonlFilesError, list_jsonl_files

    if folder is None:
        return None
    try:
        files = list_jsonl_files(folder)
    except NoJsonlFilesError as err:
        raise ConfigError(f"{input_name}: {err}") from None
    dataset = load_dataset("json", data_files=[str(f.path) for f in files], split="train")
    if "messages" not in dataset.column_names:
        raise ConfigError(f"{input_name}: {files[0].path} has no 'messages' field; expected {{\"messages\": [...]}}")
    return dataset.select_columns(["messages"])


def _trained_turns(chat: list[dict]) -> int:
    return sum(m["role"] == "assistant" and m.get("weight") != 0 for m in chat)


def apply_weights(dataset, input_name: str, tokenizer, assistant_only_loss: bool):
    """Honour ``weight: 0`` turns: the chat template leaves them out of the loss; a chat with nothing left is dropped.

    Without assistant-only loss every token trains, so weights cannot apply: that is said, not silently ignored.
    """
    from chatft.model_source import zero_weight_honoured

    if dataset is None:
        return None
    unweighted = sum(m["role"] == "assistant" and m.get("weight") == 0 for chat in dataset["messages"] for m in chat)
    if not unweighted:
        return dataset
    if not assistant_only_loss:
        print(
            f"finetune: {input_name}: {unweighted} assistant turns have weight 0, but assistant_only_loss=false "
            "trains on every token, theirs included",
            flush=True,
        )
        return dataset
    if not zero_weight_honoured(tokenizer, tokenizer.chat_template):
        raise ConfigError(
            f"{input_name}: {unweighted} assistant turns have weight 0, but the chat template of the base model "
            "cannot leave them out of the loss (its {% generation %} blocks are not inside a `for message in "
            "messages` loop); remove those turns, or drop their weight key to train on them"
        )
    kept = dataset.filter(lambda row: _trained_turns(row["messages"]) > 0)
    print(
        f"finetune: {input_name}: {unweighted} assistant turns have weight 0 and carry no loss; "
        f"{len(dataset) - len(kept)} chats with no other assistant turn are left out",
        flush=True,
    )
    if not len(kept):
        raise ConfigError(f"{input_name}: every assistant turn has weight 0; there is nothing to train on")
    return kept
