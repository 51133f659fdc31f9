"""Small, deterministic chat datasets for tests (no network, no shipped files needed)."""

from __future__ import annotations

import json
import random
from pathlib import Path

_TOPICS = ["router", "invoice", "password", "delivery", "refund", "warranty"]


def make_conversations(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct, valid multi-turn chats: system, then alternating user/assistant ending on assistant."""
    rng = random.Random(seed)
    chats = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        messages = [{"role": "system", "content": "You are a concise support assistant."}]
        for turn in range(rng.randint(1, 2)):
            messages.append({"role": "user", "content": f"Question {i}.{turn} about my {topic}?"})
            messages.append({"role": "assistant", "content": f"Answer {i}.{turn}: check the {topic} settings page."})
        chats.append({"messages": messages})
    return chats


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_chat_splits(root: Path) -> Path:
    """``root`` with train/ (24 chats) and validation/ (6 other chats) folders of chat JSONL, as prep_data writes."""
    write_jsonl(root / "train" / "train.jsonl", make_conversations(24))
    write_jsonl(root / "validation" / "validation.jsonl", make_conversations(6, seed=1))
    return root
