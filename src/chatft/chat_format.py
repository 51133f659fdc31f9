"""The chat-completion JSONL schema: one conversation per line, ``{"messages": [{"role": ..., "content": ...}]}``.

Pure checks shared by ``prep_data`` and ``validate_chat_jsonl``. Every problem carries a stable rule id (used in
reports, metric names and tests) and the rule's severity: an error rejects the record, a warning keeps it.

A valid conversation: an optional system message first, then user and assistant turns alternating, starting with
the user and ending with the assistant. Messages hold ``role`` and non-empty string ``content``, and optionally
``name`` and ``weight`` (0 or 1: whether the assistant turn is trained on). Lines and messages are numbered from 1.

Speed: a line is decoded once and parsed once (``json.loads``); everything after is dict/list look-ups. Nothing
is re-serialised: duplicates and leakage are found by a tuple of (role, content) pairs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")
_EXPECTED_ROLES = "|".join(ROLES)
_ALLOWED_KEYS = frozenset(MESSAGE_KEYS)
_UTF8_BOM = b"\xef\xbb\xbf"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    description: str


_RULE_LIST = (
    Rule("invalid_utf8", Severity.ERROR, "the line is not valid UTF-8 (a leading BOM and CRLF line endings are fine)"),
    Rule("not_json", Severity.ERROR, "the line is not one complete JSON value"),
    Rule("not_object", Severity.ERROR, "the line is JSON but not an object"),
    Rule("messages_missing", Severity.ERROR, 'the object has no "messages" key'),
    Rule("messages_not_list", Severity.ERROR, '"messages" is not a list'),
    Rule("messages_empty", Severity.ERROR, '"messages" is an empty list'),
    Rule("message_not_object", Severity.ERROR, "a message is not an object"),
    Rule("missing_role", Severity.ERROR, 'a message has no "role"'),
    Rule("missing_content", Severity.ERROR, 'a message has no "content"'),
    Rule("unknown_role", Severity.ERROR, f"a message's role is not one of {_EXPECTED_ROLES}"),
    Rule("unknown_key", Severity.ERROR, f"a message has a key other than {', '.join(MESSAGE_KEYS)}"),
    Rule("content_not_string", Severity.ERROR, "a message's content is not a string (null, a list of parts, ...)"),
    Rule("content_empty", Severity.ERROR, "a message's content is empty or whitespace only"),
    Rule("no_assistant", Severity.ERROR, "the conversation has no assistant message: nothing to learn from"),
    Rule("last_not_assistant", Severity.ERROR, "the conversation does not end with an assistant message"),
    Rule("system_not_first", Severity.ERROR, "a system message appears after the first message"),
    Rule("not_alternating", Severity.ERROR, "turns do not go user, assistant, user, ... after the optional system"),
    Rule("weight_invalid", Severity.ERROR, "a message's weight is not 0 or 1"),
    # A warning: an exact repeat is well-formed, and repeating examples is a legitimate way to up-weight them.
    # The report counts them so that an accidental repeat is seen; prep_data keeps identical lines in one split.
    Rule("duplicate", Severity.WARNING, "the same conversation already appeared earlier in the input"),
    # An error: a validation record that was also trained on makes every evaluation metric look better than it is.
    Rule("leakage", Severity.ERROR, "the same conversation appears in the reference data (the train split)"),
)
RULES: dict[str, Rule] = {rule.id: rule for rule in _RULE_LIST}


@dataclass(frozen=True, slots=True)
class Problem:
    rule: str
    message: str

    @property
    def severity(self) -> Severity:
        return RULES[self.rule].severity

    @property
    def is_error(self) -> bool:
        return RULES[self.rule].severity is Severity.ERROR


def format_problem(source: str, line_number: int, problem: Problem) -> str:
    """``train.jsonl:17: message 2 has role "bot"; expected system|user|assistant``."""
    return f"{source}:{line_number}: {problem.message}"


def _show(value: object, limit: int = 40) -> str:
    """A value as it would look in the file, shortened: roles and keys in messages are user data of any size."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def parse_line(line: bytes) -> tuple[object, Problem | None]:
    """Decode and parse one JSONL line: ``(value, None)``, or ``(None, problem)`` when it is not UTF-8 JSON.

    A leading BOM and a ``\\r\\n`` ending are accepted (JSON treats ``\\r`` as whitespace).
    """
    if line.startswith(_UTF8_BOM):
        line = line[len(_UTF8_BOM) :]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line[exc.start : exc.start + 1]
        message = f"byte {exc.start + 1} ({bad!r}) is not valid UTF-8; save the file as UTF-8"
        return None, Problem("invalid_utf8", message)
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        message = f"not valid JSON: {exc.msg} at column {exc.colno}"
        if not line.endswith(b"\n"):
            # Only a file's last line can lack a newline: a cut-off write or copy is the usual cause.
            message += " (the file's last line has no newline: it may be truncated)"
        return None, Problem("not_json", message)
    except RecursionError:
        return None, Problem("not_json", "not valid JSON: nested too deeply to parse")
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        return None, Problem("not_json", f"not valid JSON: {exc}")


def check_record(record: object) -> list[Problem]:
    """Schema problems of one parsed line (empty when it is a valid conversation)."""
    if not isinstance(record, dict):
        message = f'line holds a JSON {_json_type(record)}; expected an object {{"messages": [...]}}'
        return [Problem("not_object", message)]
    if "messages" not in record:
        keys = ", ".join(_show(key) for key in list(record)[:5]) or "none"
        return [Problem("messages_missing", f'no "messages" key (keys: {keys}); expected {{"messages": [...]}}')]
    messages = record["messages"]
    if not isinstance(messages, list):
        return [Problem("messages_not_list", f'"messages" is a JSON {_json_type(messages)}; expected a list')]
    if not messages:
        return [Problem("messages_empty", '"messages" is empty; expected at least a user and an assistant message')]

    problems: list[Problem] = []
    roles: list[str] = []
    for number, message in enumerate(messages, start=1):
        role = _check_message(number, message, problems)
        if role is not None:
            roles.append(role)
    # Order checks need every role; with one missing or unknown they would only repeat that problem.
    if len(roles) == len(messages):
        _check_order(roles, problems)
    return problems


def _check_message(number: int, message: object, problems: list[Problem]) -> str | None:
    """Append the problems of one message; return its role when it is a known one."""
    if not isinstance(message, dict):
        problems.append(
            Problem("message_not_object", f"message {number} is a JSON {_json_type(message)}; expected an object")
        )
        return None
    role = message.get("role")
    content = message.get("content")
    # Fast path for the usual message: exactly role and content, both fine. Saves ~half the checking time.
    if len(message) == 2 and role in ROLES and type(content) is str and content and not content.isspace():
        return role
    if "role" not in message:
        problems.append(Problem("missing_role", f'message {number} has no "role"; expected {_EXPECTED_ROLES}'))
    elif role not in ROLES:  # also catches non-strings: a list or dict is never equal to a role name
        problems.append(Problem("unknown_role", f"message {number} has role {_show(role)}; expected {_EXPECTED_ROLES}"))
        role = None

    if "content" not in message:
        problems.append(Problem("missing_content", f'message {number} has no "content"'))
    elif not isinstance(content, str):
        message_text = f"message {number} content is a JSON {_json_type(content)}; expected a string"
        problems.append(Problem("content_not_string", message_text))
    elif not content or content.isspace():
        problems.append(Problem("content_empty", f"message {number} content is empty"))

    unknown = [key for key in message if key not in _ALLOWED_KEYS]
    if unknown:
        listed = ", ".join(_show(key) for key in unknown[:5])
        problems.append(
            Problem("unknown_key", f"message {number} has unknown key {listed}; allowed: {', '.join(MESSAGE_KEYS)}")
        )
    if "weight" in message:
        weight = message["weight"]
        # bool is an int in Python, but JSON true is not the number 1.
        if isinstance(weight, bool) or weight not in (0, 1):
            problems.append(Problem("weight_invalid", f"message {number} has weight {_show(weight)}; expected 0 or 1"))
    return role if isinstance(role, str) else None


def _check_order(roles: list[str], problems: list[Problem]) -> None:
    for number, role in enumerate(roles[1:], start=2):
        if role == "system":
            problems.append(Problem("system_not_first", f"message {number} is a system message; only the first may be"))

    first_turn = 1 if roles[0] == "system" else 0
    expected = "user"
    for number, role in enumerate(roles[first_turn:], start=first_turn + 1):
        if role == "system":
            continue  # already reported as system_not_first
        if role != expected:
            if number == first_turn + 1:
                message = f'message {number} has role "{role}"; the conversation must start with a user message'
            else:
                message = f'message {number} has role "{role}" after another "{role}" message; expected "{expected}"'
            problems.append(Problem("not_alternating", message))
            break  # one break in the pattern shifts every later turn: report the first only
        expected = "assistant" if role == "user" else "user"

    if "assistant" not in roles:
        problems.append(Problem("no_assistant", "no assistant message: there is nothing to learn from"))
    elif roles[-1] != "assistant":
        problems.append(
            Problem(
                "last_not_assistant",
                f'the last message (message {len(roles)}) has role "{roles[-1]}"; expected "assistant"',
            )
        )


ConversationKey = tuple[tuple[str, str], ...]


def conversation_key(messages: list[dict]) -> ConversationKey:
    """What makes two conversations the same: their (role, content) pairs in order. Names and weights are ignored
    (the same text trained on is the same example). Only for messages already checked to be valid."""
    return tuple((message["role"], message["content"]) for message in messages)


def reference_keys(records: Iterable[object]) -> set[ConversationKey]:
    """Conversation keys of a reference set (parsed lines); records that are not valid enough to key are skipped:
    they are the reference set's own problem and are reported when that set is validated."""
    keys: set[ConversationKey] = set()
    for record in records:
        if isinstance(record, dict) and not check_record(record):
            keys.add(conversation_key(record["messages"]))
    return keys


@dataclass(frozen=True, slots=True)
class LineCheck:
    """The verdict on one line. ``messages`` is the number of messages when the line parsed to a valid record."""

    problems: list[Problem]
    messages: int | None = None

    @property
    def accepted(self) -> bool:
        return not any(problem.is_error for problem in self.problems)


@dataclass
class ChatValidator:
    """Checks lines one after another, remembering accepted conversations to find duplicates across the input.

    ``reference`` holds the conversation keys of a set the input must not overlap (the train split when validating
    the validation split): see :func:`reference_keys`.
    """

    reference: set[ConversationKey] | frozenset[ConversationKey] = frozenset()
    _first_seen: dict[ConversationKey, tuple[str, int]] = field(default_factory=dict, repr=False)

    def check_line(self, line: bytes, source: str, line_number: int) -> LineCheck:
        record, problem = parse_line(line)
        if problem is not None:
            return LineCheck([problem])
        problems = check_record(record)
        if any(problem.is_error for problem in problems):
            return LineCheck(problems)
        messages = record["messages"]
        key = conversation_key(messages)
        if key in self.reference:
            problems.append(Problem("leakage", "the same conversation is in the reference data; remove it from one"))
        else:
            # Only accepted records count as first occurrences: a rejected copy must not make a later one a duplicate.
            first = self._first_seen.setdefault(key, (source, line_number))
            if first != (source, line_number):
                problems.append(Problem("duplicate", f"exact duplicate of the conversation at {first[0]}:{first[1]}"))
        return LineCheck(problems, len(messages))
