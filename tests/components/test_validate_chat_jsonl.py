"""validate_chat_jsonl run for real on tiny crafted files: each rule, the outputs byte for byte, the accounting."""

from __future__ import annotations

import errno
import os
import random

import pytest

from chatft.chat_format import RULES
from tests.helpers.validate_runs import BAD_LINES, USER, chat, good, run_validator, write

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


def test_mixed_file_keeps_good_lines_byte_for_byte_and_rejects_each_rule(tmp_path):
    good_lines = [good(i) for i in range(len(BAD_LINES))]
    good_lines[3] = good_lines[3].replace(b"\n", b"\r\n")  # CRLF kept as is
    good_lines[5] = (
        '{"messages":[{"role":"user","content":"Grüße"},{"role":"assistant","content":"Hallo!"}]}\n'.encode()
    )
    lines = [line for pair in zip(good_lines, BAD_LINES.values(), strict=True) for line in pair]  # good, bad, ...
    input_file = write(tmp_path / "in" / "train.jsonl", *lines)

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "1", "--min_valid_records", "0")

    assert result.exit_code == 0
    assert result.valid == {"train.jsonl": b"".join(good_lines)}
    assert result.report["records_in"] == len(lines)
    assert result.report["records_rejected"] == len(BAD_LINES)
    assert [entry["rule"] for entry in result.rejected] == list(BAD_LINES)
    for entry in result.rejected:
        line_number = entry["line"]
        assert entry["file"] == "train.jsonl"
        assert lines[line_number - 1].decode("utf-8", "backslashreplace").rstrip("\r\n") == entry["text"]
    rule_counts = {rule: info["records"] for rule, info in result.report["rules"].items()}
    assert rule_counts == {**dict.fromkeys(rule_counts, 0), **dict.fromkeys(BAD_LINES, 1)}
    # Every rule has a crafted file in this module: the error rules here, duplicate and leakage in
    # test_leakage_from_reference_and_duplicates, too_long in the token counting tests, harmful_* under screen_harmful.
    others = {"duplicate", "leakage", "too_long", "harmful_flagged", "harmful_rejected"}
    assert set(BAD_LINES) | others == set(RULES)
    bot_line = lines.index(BAD_LINES["unknown_role"]) + 1
    message = f'train.jsonl:{bot_line}: message 2 has role "bot"; expected system|user|assistant'
    assert message in result.report["first_errors"]


def test_bom_and_crlf_are_accepted(tmp_path):
    lines = [good(i).replace(b"\n", b"\r\n") for i in range(10)]
    input_file = write(tmp_path / "in" / "windows.jsonl", b"\xef\xbb\xbf", *lines)

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert result.report["records_valid"] == 10
    # Lines byte-for-byte, CRLF included; the BOM marked the old file's encoding and is not carried over.
    assert result.valid == {"windows.jsonl": b"".join(lines)}


def test_truncated_last_line_is_rejected_and_the_rest_kept(tmp_path):
    lines = [good(i) for i in range(10)]
    truncated = good(10)[:25]
    input_file = write(tmp_path / "in" / "cut.jsonl", *lines, truncated)

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.1")

    assert result.exit_code == 0
    assert result.valid["cut.jsonl"] == b"".join(lines)
    [entry] = result.rejected
    assert (entry["line"], entry["rule"]) == (11, "not_json")
    assert "truncated" in entry["message"]


def test_complete_last_line_without_newline_is_kept_with_one_added(tmp_path):
    lines = [good(i) for i in range(10)]
    input_file = write(tmp_path / "in" / "a.jsonl", *lines[:-1], lines[-1].rstrip(b"\n"))

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert result.valid["a.jsonl"] == b"".join(lines)


def test_zero_byte_file_next_to_a_good_one(tmp_path):
    write(tmp_path / "in" / "empty.jsonl")
    write(tmp_path / "in" / "full.jsonl", *(good(i) for i in range(10)))

    result = run_validator(tmp_path, tmp_path / "in")

    assert result.exit_code == 0
    assert result.valid == {"empty.jsonl": b"", "full.jsonl": b"".join(good(i) for i in range(10))}
    assert [(f["name"], f["records_in"]) for f in result.report["files"]] == [("empty.jsonl", 0), ("full.jsonl", 10)]


def test_only_a_zero_byte_file_fails_min_valid_records_without_crashing(tmp_path, capsys):
    input_file = write(tmp_path / "in" / "empty.jsonl")

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 1
    assert result.report["records_in"] == 0
    assert result.report["messages_per_conversation"] is None
    assert "0 valid records, fewer than min_valid_records 10" in capsys.readouterr().err


def test_blank_lines_are_counted_not_records(tmp_path):
    input_file = write(
        tmp_path / "in" / "gaps.jsonl", good(0), b"\n", b"   \r\n", *(good(i) for i in range(1, 10)), b"\n"
    )

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 0
    assert (result.report["records_in"], result.report["blank_lines_skipped"]) == (10, 3)


def test_too_many_rejected_fails_after_writing_outputs(tmp_path, capsys):
    lines = [good(i) for i in range(19)]
    lines.insert(6, chat(USER, {"role": "bot", "content": "Hello"}))
    input_file = write(tmp_path / "in" / "train.jsonl", *lines)

    strict = run_validator(tmp_path, input_file)  # default max_rejected_fraction 0.01 < 1/20

    assert strict.exit_code == 1
    assert strict.report["passed"] is False
    assert strict.report["records_valid"] == 19  # the outputs are complete even though the step fails
    err = capsys.readouterr().err
    assert 'train.jsonl:7: message 2 has role "bot"; expected system|user|assistant' in err
    assert "1 of 20 records rejected (5.0%), more than max_rejected_fraction 0.01" in err

    lenient = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.05")
    assert lenient.exit_code == 0
    assert lenient.report["passed"] is True


def test_min_valid_records(tmp_path, capsys):
    input_file = write(tmp_path / "in" / "small.jsonl", *(good(i) for i in range(5)))

    assert run_validator(tmp_path, input_file, "--min_valid_records", "6").exit_code == 1
    assert "5 valid records, fewer than min_valid_records 6" in capsys.readouterr().err
    assert run_validator(tmp_path, input_file, "--min_valid_records", "5").exit_code == 0


def test_leakage_from_reference_and_duplicates(tmp_path):
    train = write(tmp_path / "train" / "train.jsonl", *(good(i) for i in range(20)))
    validation_lines = [good(i) for i in range(100, 110)] + [good(3), good(100), good(7)]
    validation = write(tmp_path / "validation" / "validation.jsonl", *validation_lines)

    result = run_validator(tmp_path, validation, "--reference_data", str(train), "--max_rejected_fraction", "0.2")

    assert result.exit_code == 0
    assert [(entry["line"], entry["rule"]) for entry in result.rejected] == [(11, "leakage"), (13, "leakage")]
    assert (result.report["rules"]["duplicate"]["severity"], result.report["rules"]["duplicate"]["records"]) == (
        "warning",
        1,
    )
    assert result.report["records_with_warnings"] == 1
    assert result.report["first_warnings"] == [
        "validation.jsonl:12: exact duplicate of the conversation at validation.jsonl:1"
    ]
    assert result.valid["validation.jsonl"] == b"".join(validation_lines[:10] + [good(100)])


def test_folder_keeps_relative_names_and_skips_hidden_files(tmp_path):
    write(tmp_path / "in" / "b.jsonl", *(good(i) for i in range(6)))
    write(tmp_path / "in" / "sub" / "a.jsonl", *(good(i) for i in range(6, 12)))
    write(tmp_path / "in" / ".ipynb_checkpoints" / "b-checkpoint.jsonl", b"not json\n")
    write(tmp_path / "in" / "notes.txt", b"not json\n")

    result = run_validator(tmp_path, tmp_path / "in")

    assert result.exit_code == 0
    assert sorted(result.valid) == ["b.jsonl", "sub/a.jsonl"]
    assert [f["name"] for f in result.report["files"]] == ["b.jsonl", "sub/a.jsonl"]


def test_everything_at_once_bom_crlf_blank_lines_bad_lines_and_a_truncated_last_line(tmp_path):
    """One file with what real exports have: a BOM, CRLF endings, a blank line, good and bad lines interleaved,
    and a last line cut off mid-record."""
    good_lines = [good(i).replace(b"\n", b"\r\n") if i % 2 else good(i) for i in range(12)]
    bad_rules = list(BAD_LINES)[:6]
    lines = []
    for i, line in enumerate(good_lines):
        lines.append(line)
        if i < len(bad_rules):
            lines.append(BAD_LINES[bad_rules[i]])
        if i == 8:
            lines.append(b"\r\n")
    truncated = good(99)[:30]
    input_file = write(tmp_path / "in" / "export.jsonl", b"\xef\xbb\xbf", *lines, truncated)

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.5")

    assert result.exit_code == 0
    assert result.valid == {"export.jsonl": b"".join(good_lines)}  # byte-for-byte, CRLF kept, BOM not carried
    assert [entry["rule"] for entry in result.rejected] == [*bad_rules, "not_json"]
    assert result.rejected[-1]["line"] == len(lines) + 1 and "truncated" in result.rejected[-1]["message"]
    assert (result.report["records_in"], result.report["blank_lines_skipped"]) == (19, 1)


def test_a_bom_inside_the_file_is_rejected_with_the_reason(tmp_path):
    # Two files joined with cat, the second saved with a BOM: JSON readers in training fail on that line.
    bom = b"\xef\xbb\xbf"
    input_file = write(tmp_path / "in" / "joined.jsonl", bom, *(good(i) for i in range(10)), bom, good(10))

    result = run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.1")

    [entry] = result.rejected
    assert (entry["line"], entry["rule"]) == (11, "not_json")
    assert "byte-order mark" in entry["message"]
    assert result.valid["joined.jsonl"] == b"".join(good(i) for i in range(10))


@pytest.mark.parametrize("kernel_copy", ["refused", "missing"])
def test_outputs_are_the_same_without_kernel_copy(tmp_path, monkeypatch, kernel_copy):
    """Accepted runs are copied with os.copy_file_range; where the kernel refuses (a mount it cannot copy between) or
    the OS has none (macOS), the user-space copy must give the same bytes."""
    lines = [good(i) if i % 3 else good(i).replace(b"\n", b"\r\n") for i in range(30)]
    lines[7] = BAD_LINES["unknown_role"]
    lines[8] = b"\n"
    lines[29] = lines[29].rstrip(b"\r\n")
    input_file = write(tmp_path / "in" / "train.jsonl", *lines)
    kernel = run_validator(tmp_path / "kernel", input_file, "--max_rejected_fraction", "0.1")

    if kernel_copy == "refused":

        def refuse(*args, **kwargs):
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    else:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    user_space = run_validator(tmp_path / "user", input_file, "--max_rejected_fraction", "0.1")

    assert user_space.valid == kernel.valid
    expected = b"".join(line for i, line in enumerate(lines) if i not in (7, 8))
    assert kernel.valid == {"train.jsonl": expected + b"\n"}


def test_binary_garbage_is_rejected_line_by_line_without_crashing(tmp_path, capsys):
    garbage = random.Random(0).randbytes(20_000)  # ~78 newlines: ~79 "records"
    input_file = write(tmp_path / "in" / "model.jsonl", garbage)

    result = run_validator(tmp_path, input_file)

    assert result.exit_code == 1
    assert result.report["records_valid"] == 0 and result.report["records_rejected"] > 10
    assert {entry["rule"] for entry in result.rejected} <= {"invalid_utf8", "not_json"}
    assert "failed:" in capsys.readouterr().err


# Token counting. The tiny models have a real chat template (SmolLM2's ChatML, Phi-3's) and a small BPE vocabulary.
