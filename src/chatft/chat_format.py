"""The chat-completion JSONL schema: one conversation per line, ``{"messages": [{"role": ..., "content": ...}]}``.

Pure checks shared by ``prep_data`` and ``validate_chat_jsonl``. Every problem carries a stable rule id (used in
reports, metric names and tests) and the rule's severity: an error rejects the record, a warning keeps it.

A valid conversation: an optional system message first, then user and assistant turns alternating, starting with
the user and ending with the assistant. Messages hold ``role`` and non-empty string ``content``, and optionally
``name`` and ``weight`` (0 or 1: whether the assistant turn is trained on). Lines and messages are numbered from 1.

Speed (``bench/bench_validate.py``): a line is decoded once and parsed once (strict ``json``). The usual record, whose
messages hold exactly a role and a string content in the expected order, is checked by a fast path that runs its
loops in C (``map``/``itemgetter``); anything else falls through to the full checks, which find and explain every
problem. Nothing is re-serialised: duplicates and leakage are found by a 128-bit digest of the contents (for a
valid conversation the roles follow from the number of messages; see chatft/conversation_keys.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from chatft.conversation_keys import ConversationKey, clean_contents, conversation_key

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "name", "weight")
_EXPECTED_ROLES = "|".join(ROLES)
_ALLOWED_KEYS = frozenset(MESSAGE_KEYS)


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    description: str


_RULE_LIST = (
    Rule(
        "invalid_utf8",
        Severity.ERROR,
        "the line is not valid UTF-8 (a BOM opening the file and CRLF endings are fine)",
    ),
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
    # A warning: training truncates the conversation, which is still worth its first max_seq_length tokens. Needs the
    # model's tokenizer, so validate_chat_jsonl checks it (see too_long_problem), not ChatValidator.
    Rule("too_long", Severity.WARNING, "over max_seq_length tokens with the model's chat template: training cuts it"),
    # Optional (validate_chat_jsonl's screen_harmful, chatft/data_screen.py): a keyword list or the content classifier
    # marks the record harmful. keep: a warning, the record stays and is listed; reject: an error, it is set aside.
    Rule("harmful_flagged", Severity.WARNING, "marked harmful by the keyword list or content classifier; kept"),
    Rule("harmful_rejected", Severity.ERROR, "marked harmful by the keyword list or content classifier; rejected"),
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


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


# Strict JSON: Python's json module also reads NaN and Infinity, which other JSON readers (and Azure OpenAI) refuse.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
# The decoder without its per-call wrapper (two regex matches and three Python calls, a third of the parse time of
# a 1 KB line): the same C scanner, on lines that start with the value and end with it or a line ending. Any other
# line goes through the whole decoder, so both accept exactly the same lines.
_scan_once = _DECODER.scan_once
_LINE_ENDINGS = ("\n", "\r\n")


def parse_line(line: bytes) -> tuple[object, Problem | None]:
    """Decode and parse one JSONL line: ``(value, None)``, or ``(None, problem)`` when it is not UTF-8 JSON.

    A ``\\r\\n`` ending is accepted (JSON treats ``\\r`` as whitespace). A byte-order mark is not part of any line:
    the reader drops the one that may open a file (``jsonl_io.iter_lines``); one at the start of a later line is
    reported, because it usually comes from joining files and the JSON readers used in training choke on it.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line[exc.start : exc.start + 1]
        message = f"byte {exc.start + 1} ({bad!r}) is not valid UTF-8; save the file as UTF-8"
        return None, Problem("invalid_utf8", message)
    if text.startswith("\ufeff"):
        message = (
            "the line starts with a byte-order mark (BOM), which only the first line of a file may have; "
            "were files joined with cat? Remove the BOM"
        )
        return None, Problem("not_json", message)
    try:
        return _DECODER.decode(text), None
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


def line_key(line: bytes) -> ConversationKey | None:
    """The key of a line that is a valid conversation (duplicates and leakage aside), or None if it has an error."""
    try:
        record = _DECODER.decode(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    contents = clean_contents(record)
    if contents is None:
        if any(problem.is_error for problem in check_record(record)):
            return None
        contents = tuple(message["content"] for message in record["messages"])
    return conversation_key(contents)


def reference_keys(lines: Iterable[bytes]) -> set[ConversationKey]:
    """Conversation keys of a reference set's lines; lines with errors are skipped: they are the reference set's own
    problem and are reported when that set is validated."""
    keys = {line_key(line) for line in lines}
    keys.discard(None)
    return keys


def too_long_problem(tokens: int, max_seq_length: int, assistant_cut: int | None, assistant: int | None) -> Problem:
    """The ``too_long`` warning: how long, by how much, and how much of what the model learns from is lost
    (``assistant_cut`` of the conversation's ``assistant`` tokens; None when they cannot be told apart)."""
    message = (
        f"{tokens} tokens with the chat template, more than max_seq_length {max_seq_length}: "
        f"training cuts the last {tokens - max_seq_length}"
    )
    if assistant_cut is not None and assistant and assistant_cut >= assistant:
        message += ", every assistant token among them: nothing of this conversation is trained"
    elif assistant_cut is not None:
        message += f" ({assistant_cut} of them assistant tokens)"
    return Problem("too_long", message)


@dataclass(frozen=True, slots=True)
class LineCheck:
    """The verdict on one line. ``messages`` is the number of messages when the line is an accepted record."""

    problems: tuple[Problem, ...]
    messages: int | None = None
    accepted: bool = False

    @classmethod
    def of(cls, problems: Iterable[Problem], messages: int | None = None) -> LineCheck:
        problems = tuple(problems)
        accepted = not any(problem.is_error for problem in problems)
        return cls(problems, messages if accepted else None, accepted)


_CLEAN_CHECKS: dict[int, LineCheck] = {}


def _clean_check(messages: int) -> LineCheck:
    """The (immutable, shared) verdict on an accepted line without problems."""
    check = _CLEAN_CHECKS.get(messages)
    if check is None:
        check = _CLEAN_CHECKS[messages] = LineCheck((), messages, True)
    return check


@dataclass
class ChatValidator:
    """Checks lines one after another, remembering accepted conversations to find duplicates across the input.

    ``reference`` holds the conversation keys of a set the input must not overlap (the train split when validating
    the validation split): see :func:`reference_keys`.
    """

    reference: set[ConversationKey] | frozenset[ConversationKey] = frozenset()
    _first_seen: dict[ConversationKey, tuple[str, int]] = field(default_factory=dict, repr=False)

    def check_line(self, line: bytes, source: str, line_number: int) -> LineCheck:
        """Check one line as read from the file (with its line ending; without the BOM that may open the file)."""
        try:
            text = line.decode("utf-8")
            record, end = _scan_once(text, 0)
            if end != len(text) and text[end:] not in _LINE_ENDINGS:
                record = _DECODER.decode(text)  # trailing whitespace is fine, anything else raises
        except (ValueError, StopIteration, RecursionError):  # UnicodeDecodeError, JSONDecodeError are ValueErrors
            record, problem = parse_line(line)  # leading whitespace is fine too; or say exactly what is wrong
            if problem is not None:
                return LineCheck.of([problem])
        contents = clean_contents(record)
        if contents is None:
            problems = check_record(record)
            if any(problem.is_error for problem in problems):
                return LineCheck.of(problems)
            contents = tuple(message["content"] for message in record["messages"])
        key = conversation_key(contents)
        if self.reference and key in self.reference:
            leak = Problem("leakage", "the same conversation is in the reference data; remove it from one")
            return LineCheck.of([leak])
        # Only accepted records count as first occurrences: a rejected copy must not make a later one a duplicate.
        here = (source, line_number)
        first = self._first_seen.setdefault(key, here)
        if first is here:
            return _CLEAN_CHECKS.get(len(contents)) or _clean_check(len(contents))
        duplicate = Problem("duplicate", f"exact duplicate of the conversation at {first[0]}:{first[1]}")
        return LineCheck.of([duplicate], len(contents))
