"""Screening of training records for harmful content (validate_chat_jsonl's ``screen_harmful`` setting).

Two sources, either may flag a record: a keyword list (``harmful_keywords.txt`` beside this file, always) and the
Azure AI Content Safety classifier (only when ``CONTENT_SAFETY_ENDPOINT`` is set, through chatft.content_safety,
blocking at medium severity in every category). A flagged record gets the ``harmful_flagged`` warning (kept, and
listed with file and line) or, with ``reject``, the ``harmful_rejected`` error (set aside in rejected.jsonl).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from chatft.chat_format import LineCheck, Problem

KEYWORDS_FILE = Path(__file__).with_name("harmful_keywords.txt")
MODES = ("off", "keep", "reject")
CLASSIFIER_THRESHOLD = 4  # medium, Azure OpenAI's default filter level, for every category


def load_keywords(path: Path = KEYWORDS_FILE) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line.lower() for line in lines if line and not line.startswith("#")]


class DataScreen:
    """``check(line, verdict)``: the verdict on an accepted line, with the screening problem added if flagged."""

    def __init__(self, mode: str, keywords: list[str] | None = None, classifier=None):
        if mode not in MODES[1:]:
            raise ValueError(f"screen_harmful must be one of {', '.join(MODES)}, got {mode!r}")
        self.rule = "harmful_rejected" if mode == "reject" else "harmful_flagged"
        words = keywords if keywords is not None else load_keywords()
        self._pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        self.classifier = classifier  # a chatft.content_safety.Screen, or None

    @classmethod
    def from_environment(cls, mode: str, environ=os.environ) -> DataScreen | None:
        if mode == "off":
            return None
        classifier = None
        endpoint = environ.get("CONTENT_SAFETY_ENDPOINT", "").strip()
        if endpoint:
            from chatft.content_safety import CATEGORIES, Screen, Settings

            thresholds = dict.fromkeys(CATEGORIES, CLASSIFIER_THRESHOLD)
            classifier = Screen(endpoint, Settings(thresholds, "fail_closed", 10.0, 2, "-"))
        return cls(mode, classifier=classifier)

    def reason(self, text: str) -> str | None:
        """Why ``text`` is flagged, or None. Raises ContentSafetyUnavailable when the classifier cannot answer."""
        match = self._pattern.search(text)
        if match:
            return f'keyword "{match.group(0).lower()}" from the harmful keyword list'
        if self.classifier is not None:
            verdict = self.classifier.verdict(text)
            if verdict.blocked:
                return f"Azure AI Content Safety rates it {verdict.category} severity {verdict.severity}"
        return None

    def check(self, line: bytes, verdict: LineCheck) -> LineCheck:
        messages = json.loads(line)["messages"]
        reason = self.reason("\n".join(message["content"] for message in messages))
        if reason is None:
            return verdict
        action = "rejected (screen_harmful=reject)" if self.rule == "harmful_rejected" else "kept for review"
        problem = Problem(self.rule, f"flagged as harmful: {reason}; {action}")
        return LineCheck.of([*verdict.problems, problem], verdict.messages)
