"""The chat schema rules: each rule fires alone on a line crafted to break it, valid variants pass untouched."""

from __future__ import annotations

import json

import pytest

from chatft.chat_format import (
    RULES,
    ChatValidator,
    Severity,
    check_record,
    format_problem,
    parse_line,
    reference_keys,
)

SYSTEM = {"role": "system", "content": "You are the Contoso Fiber support assistant."}
USER = {"role": "user", "content": "My router light is red."}
ASSISTANT = {"role": "assistant", "content": "Unplug it for 30 seconds."}


def line(record: object) -> bytes:
    return (json.dumps(record) + "\n").encode("utf-8")


def chat(*messages: dict) -> bytes:
    return line({"messages": list(messages)})


# One line per rule (and a few variants), each breaking that rule and nothing else.
BAD_LINES = [
    ("invalid_utf8", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'),
    ("not_json", b'{"messages": [}\n'),
    ("not_json", b"[" * 100_000 + b"\n"),  # too deep for the parser: reported, not a crash
    ("not_object", b"[1, 2]\n"),
    ("not_object", b'"just a string"\n'),
    ("messages_missing", line({"conversation": [USER, ASSISTANT]})),
    ("messages_not_list", line({"messages": {"role": "user"}})),
    ("messages_empty", line({"messages": []})),
    ("message_not_object", chat(USER, ASSISTANT, "and another thing")),
    ("missing_role", chat({"content": "Hi"}, ASSISTANT)),
    ("missing_content", chat(USER, {"role": "assistant"})),
    ("unknown_role", chat(USER, {"role": "bot", "content": "Hello"})),
    ("unknown_role", chat(USER, {"role": "Assistant", "content": "Hello"})),
    ("unknown_role", chat({"role": ["user"], "content": "Hi"}, ASSISTANT)),
    ("unknown_key", chat(USER, {**ASSISTANT, "tool_calls": []})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": None})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]})),
    ("content_empty", chat(USER, {"role": "assistant", "content": " \n\t"})),
    ("content_empty", chat({"role": "user", "content": ""}, ASSISTANT)),
    ("no_assistant", chat(SYSTEM, USER)),
    ("last_not_assistant", chat(USER, ASSISTANT, USER)),
    ("system_not_first", chat(USER, SYSTEM, ASSISTANT)),
    ("not_alternating", chat(USER, USER, ASSISTANT)),
    ("not_alternating", chat(SYSTEM, ASSISTANT, USER, ASSISTANT)),
    ("not_alternating", chat(USER, ASSISTANT, ASSISTANT)),
    ("weight_invalid", chat(USER, {**ASSISTANT, "weight": 2})),
    ("weight_invalid", chat(USER, {**ASSISTANT, "weight": True})),
    ("weight_invalid", chat(USER, {**ASSISTANT, "weight": "1"})),
]


@pytest.mark.parametrize(("rule", "raw"), BAD_LINES, ids=[f"{rule}-{i}" for i, (rule, _) in enumerate(BAD_LINES)])
def test_each_bad_line_breaks_exactly_its_rule(rule, raw):
    verdict = ChatValidator().check_line(raw, "train.jsonl", 3)
    assert [problem.rule for problem in verdict.problems] == [rule]
    assert not verdict.accepted
    assert verdict.problems[0].severity is Severity.ERROR


def test_every_rule_has_a_test():
    # duplicate and leakage need a second record; they are tested below.
    tested = {rule for rule, _ in BAD_LINES} | {"duplicate", "leakage"}
    assert tested == set(RULES)


VALID_LINES = [
    chat(SYSTEM, USER, ASSISTANT),
    chat(USER, ASSISTANT, USER, ASSISTANT),  # the system message is optional
    b"\xef\xbb\xbf" + chat(USER, ASSISTANT),  # a leading BOM
    chat(USER, ASSISTANT).replace(b"\n", b"\r\n"),  # CRLF line ending
    chat(USER, ASSISTANT).rstrip(b"\n"),  # a last line without newline
    chat({**USER, "name": "priya"}, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1}),
    line({"messages": [USER, {"role": "assistant", "content": "Ça marche, 👍"}]}),  # non-ASCII as \u escapes
    '{"messages": [{"role": "user", "content": "Grüße"}, {"role": "assistant", "content": "日本語"}]}\n'.encode(),
    line({"messages": [USER, ASSISTANT], "id": "extra top-level keys are metadata"}),
]


@pytest.mark.parametrize("raw", VALID_LINES)
def test_valid_lines_pass_without_problems(raw):
    verdict = ChatValidator().check_line(raw, "train.jsonl", 1)
    assert verdict.accepted
    assert verdict.problems == []
    assert verdict.messages == len(parse_line(raw)[0]["messages"])


def test_messages_say_where_and_what():
    verdict = ChatValidator().check_line(chat(USER, {"role": "bot", "content": "Hi"}), "train.jsonl", 17)
    assert format_problem("train.jsonl", 17, verdict.problems[0]) == (
        'train.jsonl:17: message 2 has role "bot"; expected system|user|assistant'
    )


def test_truncated_last_line_is_called_out():
    _, problem = parse_line(b'{"messages": [{"role": "user", "cont')
    assert problem.rule == "not_json"
    assert "truncated" in problem.message
    _, problem = parse_line(b'{"messages": [}\n')
    assert "truncated" not in problem.message  # a newline-terminated line was written whole


def test_all_problems_of_a_record_are_listed():
    problems = check_record({"messages": [{"role": "bot", "content": 5, "extra": 1}, {"role": "user"}]})
    assert sorted(problem.rule for problem in problems) == [
        "content_not_string",
        "missing_content",
        "unknown_key",
        "unknown_role",
    ]  # no order rules: with an unknown role they would only repeat it


def test_duplicates_are_warnings_that_point_at_the_first_copy():
    validator = ChatValidator()
    first = chat(SYSTEM, USER, ASSISTANT)
    same_with_other_spacing = json.dumps({"messages": [SYSTEM, USER, ASSISTANT]}, indent=1).replace("\n", "").encode()
    same_with_weight = chat(SYSTEM, USER, {**ASSISTANT, "weight": 1})
    assert validator.check_line(first, "a.jsonl", 1).problems == []
    for line_number, raw in ((2, same_with_other_spacing), (3, same_with_weight)):
        verdict = validator.check_line(raw, "a.jsonl", line_number)
        assert verdict.accepted
        assert [(problem.rule, problem.severity) for problem in verdict.problems] == [("duplicate", Severity.WARNING)]
        assert "a.jsonl:1" in verdict.problems[0].message
    assert validator.check_line(chat(SYSTEM, USER, {**ASSISTANT, "content": "Other"}), "a.jsonl", 4).problems == []


def test_a_rejected_copy_does_not_make_the_next_one_a_duplicate():
    validator = ChatValidator()
    assert not validator.check_line(chat(USER, {**ASSISTANT, "tool_calls": []}), "a.jsonl", 1).accepted
    assert validator.check_line(chat(USER, ASSISTANT), "a.jsonl", 2).problems == []


def test_leakage_from_the_reference_set_is_an_error():
    train_records = [{"messages": [USER, ASSISTANT]}, {"messages": "not valid, ignored"}, [1, 2]]
    validator = ChatValidator(reference=reference_keys(train_records))
    leaked = validator.check_line(chat(USER, {**ASSISTANT, "weight": 1}), "validation.jsonl", 1)
    assert [problem.rule for problem in leaked.problems] == ["leakage"]
    assert not leaked.accepted
    assert validator.check_line(chat(SYSTEM, USER, ASSISTANT), "validation.jsonl", 2).accepted


def test_every_rule_has_an_id_severity_and_description():
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id and rule_id.isidentifier()
        assert rule.severity in (Severity.ERROR, Severity.WARNING)
        assert rule.description
    assert RULES["duplicate"].severity is Severity.WARNING
