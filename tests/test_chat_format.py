"""The chat schema rules: each rule fires alone on a line crafted to break it, valid variants pass untouched, and
the fast path for common records agrees with the full checks."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from chatft.chat_format import (
    RULES,
    ChatValidator,
    Severity,
    check_record,
    format_problem,
    line_key,
    parse_line,
    reference_keys,
    too_long_problem,
)
from chatft.conversation_keys import clean_contents, conversation_key

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
    ("invalid_utf8", b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}\n'),  # an encoded surrogate
    ("not_json", b'{"messages": [}\n'),
    ("not_json", b"[" * 100_000 + b"\n"),  # too deep for the parser: reported, not a crash
    ("not_json", chat(USER, ASSISTANT).replace(b"\n", b"\x0c\n")),  # a form feed is not JSON whitespace
    ("not_json", chat(USER, ASSISTANT).replace(b"\n", b' {"messages": []}\n')),  # two values on one line
    ("not_json", b"\xef\xbb\xbf" + chat(USER, ASSISTANT)),  # a BOM inside a file: files joined with cat
    ("not_json", b"NaN\n"),
    ("not_object", b"[1, 2]\n"),
    ("not_object", b'"just a string"\n'),
    ("not_object", b"null\n"),
    ("messages_missing", line({"conversation": [USER, ASSISTANT]})),
    ("messages_not_list", line({"messages": {"role": "user"}})),
    ("messages_not_list", line({"messages": {"role": "user", "content": "hi"}})),  # two keys, like two messages
    ("messages_not_list", line({"messages": "ab"})),
    ("messages_empty", line({"messages": []})),
    ("message_not_object", chat(USER, ASSISTANT, "and another thing")),
    ("message_not_object", line({"messages": [["user", "hi"], ASSISTANT]})),
    ("missing_role", chat({"content": "Hi"}, ASSISTANT)),
    ("missing_content", chat(USER, {"role": "assistant"})),
    ("missing_content", chat({"role": "user"}, {**ASSISTANT, "name": "x"})),  # 1 + 3 keys: still two per message
    ("unknown_role", chat(USER, {"role": "bot", "content": "Hello"})),
    ("unknown_role", chat(USER, {"role": "Assistant", "content": "Hello"})),
    ("unknown_role", chat({"role": ["user"], "content": "Hi"}, ASSISTANT)),
    ("unknown_key", chat(USER, {**ASSISTANT, "tool_calls": []})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": None})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": 5})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": 0})),
    ("content_not_string", chat(USER, {"role": "assistant", "content": True})),
    ("content_empty", chat(USER, {"role": "assistant", "content": " \n\t"})),
    ("content_empty", chat({"role": "user", "content": ""}, ASSISTANT)),
    ("no_assistant", chat(SYSTEM, USER)),
    ("no_assistant", chat(SYSTEM)),  # a lone system message has the right roles for one message
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
    assert line_key(raw) is None


def test_every_rule_has_a_test():
    # duplicate and leakage need a second record (below); too_long needs a tokenizer (tests/components/
    # test_validate_chat_jsonl.py runs it; its message is checked below).
    # harmful_flagged and harmful_rejected need screen_harmful (tests/components/test_validate_chat_jsonl.py).
    tested = {rule for rule, _ in BAD_LINES} | {
        "duplicate",
        "leakage",
        "too_long",
        "harmful_flagged",
        "harmful_rejected",
    }
    assert tested == set(RULES)


VALID_LINES = [
    chat(SYSTEM, USER, ASSISTANT),
    chat(USER, ASSISTANT, USER, ASSISTANT),  # the system message is optional
    chat(USER, ASSISTANT).replace(b"\n", b"\r\n"),  # CRLF line ending
    chat(USER, ASSISTANT).rstrip(b"\n"),  # a last line without newline
    chat(USER, ASSISTANT).rstrip(b"\n") + b"\r",  # ... or ending in a lone CR
    b"  \t" + chat(USER, ASSISTANT).replace(b"\n", b" \t\r\n"),  # JSON whitespace around the value
    chat({**USER, "name": "priya"}, {**ASSISTANT, "weight": 0}, USER, {**ASSISTANT, "weight": 1}),
    line({"messages": [USER, {"role": "assistant", "content": "Ça marche, 👍"}]}),  # non-ASCII as \u escapes
    '{"messages": [{"role": "user", "content": "Grüße"}, {"role": "assistant", "content": "日本語"}]}\n'.encode(),
    line({"messages": [USER, ASSISTANT], "id": "extra top-level keys are metadata"}),
    line({"messages": [USER, {"role": "assistant", "content": "lone surrogate \ud800 escaped"}]}),
    line({"messages": [{"role": "user", "content": "a\x00b"}, ASSISTANT]}),  # NUL escaped as \u0000
]


@pytest.mark.parametrize("raw", VALID_LINES)
def test_valid_lines_pass_without_problems(raw):
    verdict = ChatValidator().check_line(raw, "train.jsonl", 1)
    assert verdict.accepted
    assert verdict.problems == ()
    assert verdict.messages == len(json.loads(raw)["messages"])
    assert line_key(raw) is not None


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


def test_a_bom_inside_a_file_is_explained():
    _, problem = parse_line(b"\xef\xbb\xbf" + chat(USER, ASSISTANT))
    assert problem.rule == "not_json"
    assert "byte-order mark" in problem.message and "only the first line of a file" in problem.message


def test_all_problems_of_a_record_are_listed():
    problems = check_record({"messages": [{"role": "bot", "content": 5, "extra": 1}, {"role": "user"}]})
    assert sorted(problem.rule for problem in problems) == [
        "content_not_string",
        "missing_content",
        "unknown_key",
        "unknown_role",
    ]  # no order rules: with an unknown role they would only repeat it


def _mutations(rng: random.Random, record: dict) -> dict:
    """A copy of a valid record with one or two random edits of the kinds real data has."""
    record = copy.deepcopy(record)
    messages = record["messages"]
    for _ in range(rng.randint(1, 2)):
        index = rng.randrange(len(messages)) if messages else 0
        kind = rng.randrange(12)
        if not messages or kind == 0:
            messages.append(rng.choice([copy.deepcopy(USER), copy.deepcopy(ASSISTANT), "text", None]))
        elif kind == 1:
            del messages[index]
        elif kind == 2 and isinstance(messages[index], dict):
            messages[index].pop(rng.choice(["role", "content"]), None)
        elif kind == 3 and isinstance(messages[index], dict):
            messages[index]["role"] = rng.choice(["system", "user", "assistant", "bot", "", None, 1])
        elif kind == 4 and isinstance(messages[index], dict):
            messages[index]["content"] = rng.choice(["", " ", "ok", None, 0, 7, ["x"], {"a": 1}, True])
        elif kind == 5 and isinstance(messages[index], dict):
            messages[index][rng.choice(["name", "weight", "extra"])] = rng.choice([0, 1, 2, "x", None])
        elif kind == 6:
            messages.insert(index, messages[index])
        elif kind == 7:
            rng.shuffle(messages)
        elif kind == 8:
            messages[index] = rng.choice([[1], "user", 3, None])
        elif kind == 9:
            record["messages"] = rng.choice([{}, {"role": "user", "content": "x"}, "ab", "", None, 0, messages[:1]])
            return record
        elif kind == 10:
            return rng.choice([messages, [record], "text", 5, None])
    return record


def test_fast_path_agrees_with_the_full_checks():
    """clean_contents (the fast path) may only accept what check_record accepts, and must accept every valid record
    whose messages hold just role and content: else records would be judged by two different rule sets."""
    rng = random.Random(1234)
    bases = [
        {"messages": [SYSTEM, USER, ASSISTANT]},
        {"messages": [USER, ASSISTANT, USER, ASSISTANT]},
        {"messages": [SYSTEM, USER, ASSISTANT, USER, ASSISTANT]},
    ]
    seen_fast = seen_slow_valid = seen_invalid = 0
    for _ in range(5000):
        record = _mutations(rng, rng.choice(bases))
        contents = clean_contents(record)
        valid = not check_record(record)
        plain = valid and all(set(message) == {"role", "content"} for message in record["messages"])
        if contents is not None:
            assert valid, record
            assert contents == tuple(message["content"] for message in record["messages"])
            seen_fast += 1
        else:
            assert not plain, record
            seen_slow_valid += valid
        seen_invalid += not valid
    assert seen_fast > 100 and seen_invalid > 1000 and seen_slow_valid > 10  # every branch was exercised


def test_duplicates_are_warnings_that_point_at_the_first_copy():
    validator = ChatValidator()
    first = chat(SYSTEM, USER, ASSISTANT)
    same_with_other_spacing = json.dumps({"messages": [SYSTEM, USER, ASSISTANT]}, indent=1).replace("\n", "").encode()
    same_with_weight = chat(SYSTEM, USER, {**ASSISTANT, "weight": 1})
    assert validator.check_line(first, "a.jsonl", 1).problems == ()
    for line_number, raw in ((2, same_with_other_spacing), (3, same_with_weight)):
        verdict = validator.check_line(raw, "a.jsonl", line_number)
        assert verdict.accepted
        assert [(problem.rule, problem.severity) for problem in verdict.problems] == [("duplicate", Severity.WARNING)]
        assert "a.jsonl:1" in verdict.problems[0].message
    assert validator.check_line(chat(SYSTEM, USER, {**ASSISTANT, "content": "Other"}), "a.jsonl", 4).problems == ()


def test_keys_tell_apart_conversations_whose_joined_text_is_the_same():
    # Joined with NUL, both read "a\0b\0c": the key must not join ambiguously.
    assert conversation_key(("a\x00b", "c")) != conversation_key(("a", "b\x00c"))
    assert conversation_key(("a", "b")) != conversation_key(("a\x00b",))
    assert conversation_key(("ab", "c")) != conversation_key(("a", "bc"))
    assert conversation_key(("lone \ud800",)) == conversation_key(("lone \ud800",))
    validator = ChatValidator()
    first = chat({"role": "user", "content": "a\x00b"}, {"role": "assistant", "content": "c"})
    second = chat({"role": "user", "content": "a"}, {"role": "assistant", "content": "b\x00c"})
    assert validator.check_line(first, "a.jsonl", 1).problems == ()
    assert validator.check_line(second, "a.jsonl", 2).problems == ()
    assert validator.check_line(first, "a.jsonl", 3).problems[0].rule == "duplicate"


def test_keys_without_xxhash_still_find_duplicates():
    """The inference image imports this module (for ROLES) without xxhash: the stdlib fallback must work too."""
    code = (
        "import sys; sys.modules['xxhash'] = None\n"
        "from chatft.chat_format import ChatValidator\n"
        "from chatft.conversation_keys import conversation_key\n"
        "assert len(conversation_key(('a', 'b'))) == 16\n"
        "assert conversation_key(('a\\x00b', 'c')) != conversation_key(('a', 'b\\x00c'))\n"
        'v = ChatValidator(); raw = b\'{"messages": [{"role": "user", "content": "a"}, '
        '{"role": "assistant", "content": "b"}]}\\n\'\n'
        "assert v.check_line(raw, 'a', 1).problems == ()\n"
        "assert v.check_line(raw, 'a', 2).problems[0].rule == 'duplicate'\n"
    )
    src = Path(__file__).resolve().parents[1] / "src"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(src)}, timeout=60)


def test_a_rejected_copy_does_not_make_the_next_one_a_duplicate():
    validator = ChatValidator()
    assert not validator.check_line(chat(USER, {**ASSISTANT, "tool_calls": []}), "a.jsonl", 1).accepted
    assert validator.check_line(chat(USER, ASSISTANT), "a.jsonl", 2).problems == ()


def test_leakage_from_the_reference_set_is_an_error():
    train_lines = [chat(USER, ASSISTANT), line({"messages": "not valid, ignored"}), b"[1, 2]\n", b"not json\n"]
    validator = ChatValidator(reference=reference_keys(train_lines))
    leaked = validator.check_line(chat(USER, {**ASSISTANT, "weight": 1}), "validation.jsonl", 1)
    assert [problem.rule for problem in leaked.problems] == ["leakage"]
    assert not leaked.accepted
    assert validator.check_line(chat(SYSTEM, USER, ASSISTANT), "validation.jsonl", 2).accepted


def test_too_long_message_says_how_much_is_cut():
    problem = too_long_problem(2100, 2048, 40, 300)
    assert problem.rule == "too_long" and problem.severity is Severity.WARNING and not problem.is_error
    assert problem.message == (
        "2100 tokens with the chat template, more than max_seq_length 2048: training cuts the last 52 "
        "(40 of them assistant tokens)"
    )
    assert "nothing of this conversation is trained" in too_long_problem(5000, 2048, 300, 300).message
    assert too_long_problem(2100, 2048, None, None).message.endswith("training cuts the last 52")


def test_every_rule_has_an_id_severity_and_description():
    for rule_id, rule in RULES.items():
        assert rule.id == rule_id and rule_id.isidentifier()
        assert rule.severity in (Severity.ERROR, Severity.WARNING)
        assert rule.description
    assert {rule for rule, r in RULES.items() if r.severity is Severity.WARNING} == {
        "duplicate",
        "too_long",
        "harmful_flagged",
    }
