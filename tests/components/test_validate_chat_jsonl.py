"""validate_chat_jsonl run for real on tiny crafted files. Every run checks that the accounting closes."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from chatft.chat_format import RULES
from chatft.errors import exit_on_error
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.components import load_script

REPO = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO / "components" / "validate_chat_jsonl"
SCRIPT = COMPONENT_DIR / "validate_chat_jsonl.py"


# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


validate_chat_jsonl = load_script("component_validate_chat_jsonl", SCRIPT)

SYSTEM = {"role": "system", "content": "You are the Contoso Fiber support assistant."}


def good(i: int) -> bytes:
    messages = [SYSTEM, {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return (json.dumps({"messages": messages}) + "\n").encode()


def chat(*messages: dict) -> bytes:
    return (json.dumps({"messages": list(messages)}) + "\n").encode()


USER = {"role": "user", "content": "Is there an outage?"}
ASSISTANT = {"role": "assistant", "content": "Check Service status in the app."}

# One rejected line per error rule (leakage needs a reference set and is tested on its own).
BAD_LINES = {
    "invalid_utf8": b'{"messages": "\xff\xfe"}\n',
    "not_json": b'{"messages": [\n',
    "not_object": b"[]\n",
    "messages_missing": b'{"msgs": []}\n',
    "messages_not_list": b'{"messages": "hi"}\n',
    "messages_empty": b'{"messages": []}\n',
    "message_not_object": chat(USER, ASSISTANT, 42),
    "missing_role": chat({"content": "Hi"}, ASSISTANT),
    "missing_content": chat(USER, {"role": "assistant"}),
    "unknown_role": chat(USER, {"role": "bot", "content": "Hello"}),
    "unknown_key": chat(USER, {**ASSISTANT, "function_call": None}),
    "content_not_string": chat(USER, {"role": "assistant", "content": None}),
    "content_empty": chat(USER, {"role": "assistant", "content": "   "}),
    "no_assistant": chat(SYSTEM, USER),
    "last_not_assistant": chat(USER, ASSISTANT, USER),
    "system_not_first": chat(USER, SYSTEM, ASSISTANT),
    "not_alternating": chat(USER, USER, ASSISTANT),
    "weight_invalid": chat(USER, {**ASSISTANT, "weight": 0.5}),
}


@pytest.fixture
def mlflow_run(mlflow_store, monkeypatch):
    """As the local backend does: the step's run exists and MLFLOW_RUN_ID names it (mlflow consumes the variable)."""
    _, client, experiment_id = mlflow_store
    run_id = client.create_run(experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


@dataclass
class Result:
    exit_code: int
    report: dict
    valid: dict[str, bytes]  # output file name -> content
    rejected: list[dict]


def run_main(args) -> int:
    """The exit code the command line gives: main's 0, or the code of the error it raised."""
    try:
        return exit_on_error("validate_chat_jsonl", validate_chat_jsonl.main, args)
    except SystemExit as exit:
        return exit.code


def run_validator(tmp_path: Path, input_data: Path, *flags: str) -> Result:
    out = tmp_path / "out"
    args = validate_chat_jsonl.parse_args(
        [
            "--input_data", str(input_data),
            "--valid_data", str(out / "valid"),
            "--rejected_data", str(out / "rejected"),
            "--data_report", str(out / "report"),
            *flags,
        ]
    )  # fmt: skip
    exit_code = run_main(args)
    report = json.loads((out / "report" / "data_report.json").read_text())
    markdown = (out / "report" / "data_report.md").read_text()
    assert markdown.startswith("# Data report")
    if report["records_valid"]:
        assert (out / "report" / "messages_per_conversation.png").read_bytes().startswith(b"\x89PNG")
        assert "](messages_per_conversation.png)" in markdown
    valid = {p.relative_to(out / "valid").as_posix(): p.read_bytes() for p in (out / "valid").rglob("*.jsonl")}
    rejected_text = (out / "rejected" / "rejected.jsonl").read_text(encoding="utf-8")
    rejected = [json.loads(entry) for entry in rejected_text.splitlines()]
    # The accounting closes: every record is either in valid_data or in rejected.jsonl, never both, never lost.
    valid_lines = sum(content.count(b"\n") for content in valid.values())
    assert report["records_in"] == report["records_valid"] + report["records_rejected"]
    assert report["records_valid"] == valid_lines
    assert report["records_rejected"] == len(rejected)
    assert report["records_in"] == sum(f["records_in"] for f in report["files"])
    for counts in report["files"]:
        assert counts["records_in"] == counts["records_valid"] + counts["records_rejected"]
    # ... and every input line is accounted for once: a valid line, a rejected line or a skipped blank line.
    inputs = [input_data] if input_data.is_file() else sorted(input_data.rglob("*.jsonl"))
    contents = [path.read_bytes() for path in inputs if ".ipynb" not in str(path)]
    input_lines = sum(data.count(b"\n") + (not data.endswith(b"\n") and bool(data)) for data in contents)
    assert input_lines == report["records_in"] + report["blank_lines_skipped"]
    return Result(exit_code, report, valid, rejected)


def write(path: Path, *lines: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(lines))
    return path


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
MAX_SEQ_LENGTH = 64  # the smallest the spec allows; most test chats are shorter, the three padded ones longer


def token_chats() -> list[dict]:
    chats = make_conversations(30, seed=3)
    for k in (0, 1, 2):  # three long replies
        chats[k * 10]["messages"][-1]["content"] += " check the router settings page" * (8 * (k + 1))
    return chats


def expected_token_counts(model_dir: Path, chats: list[dict], limit: int) -> dict:
    """Counted one conversation at a time, without the component's batching, as TRL tokenizes each example."""
    from chatft.model_source import load_tokenizer, training_chat_template

    tokenizer = load_tokenizer(model_dir)
    tokenizer.chat_template = training_chat_template(tokenizer)
    lengths, assistant, trained = [], 0, 0
    for chat in chats:
        out = tokenizer.apply_chat_template(
            chat["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        lengths.append(len(out["input_ids"]))
        assistant += sum(out["assistant_masks"])
        trained += sum(out["assistant_masks"][:limit])
    return {
        "lengths": lengths,
        "total": sum(lengths),
        "assistant": assistant,
        "trained_per_epoch": trained,
        "processed_per_epoch": sum(min(length, limit) for length in lengths),
    }


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_tokens_are_counted_with_the_chat_template_and_long_chats_warned(tmp_path, request, arch, monkeypatch):
    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    monkeypatch.setattr(validate_chat_jsonl, "TOKEN_BATCH", 7)  # several batches and a partial last one
    chats = token_chats()
    input_file = write_jsonl(tmp_path / "in" / "train.jsonl", chats)
    expected = expected_token_counts(model_dir, chats, MAX_SEQ_LENGTH)
    too_long = [number for number, length in enumerate(expected["lengths"], start=1) if length > MAX_SEQ_LENGTH]
    assert 0 < len(too_long) < len(chats)  # the test data has both kinds

    flags = ("--base_model", str(model_dir), "--max_seq_length", str(MAX_SEQ_LENGTH))
    result = run_validator(tmp_path, input_file, *flags)

    assert result.exit_code == 0
    tokens = result.report["tokens"]
    assert tokens["counted_with"] == model_dir.name
    for key in ("total", "assistant", "trained_per_epoch", "processed_per_epoch"):
        assert tokens[key] == expected[key], key
    assert tokens["assistant_only_loss"] is True
    assert tokens["max_seq_length"] == MAX_SEQ_LENGTH
    assert tokens["records_too_long"] == len(too_long) == result.report["rules"]["too_long"]["records"]
    assert tokens["tokens_cut"] == sum(length - MAX_SEQ_LENGTH for length in expected["lengths"] if length > 64)
    assert tokens["per_conversation"]["max"] == max(expected["lengths"])
    # Warnings keep the record: every line is valid, and each long one is named with what training cuts.
    assert result.report["records_valid"] == len(chats) and result.report["records_with_warnings"] == len(too_long)
    warned = [int(w.split(":")[1]) for w in result.report["first_warnings"]]
    assert warned == too_long
    first = result.report["first_warnings"][0]
    assert re.fullmatch(
        rf"train\.jsonl:{too_long[0]}: {expected['lengths'][too_long[0] - 1]} tokens with the chat template, more "
        rf"than max_seq_length 64: training cuts the last \d+ \(\d+ of them assistant tokens\)",
        first,
    ), first
    report_dir = tmp_path / "out" / "report"
    assert (report_dir / "token_lengths.png").read_bytes().startswith(b"\x89PNG")
    markdown = (report_dir / "data_report.md").read_text()
    assert f"**{tokens['trained_per_epoch']}**" in markdown and "](token_lengths.png)" in markdown


def test_trained_tokens_per_epoch_are_what_trl_trains_on(tmp_path, tiny_llama_dir):
    """The report's trained_per_epoch and processed_per_epoch against TRL's own prepared dataset, configured as
    components/finetune configures it (packing best-fit, assistant-only loss, max_length)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from chatft.model_source import load_causal_lm, load_tokenizer, training_chat_template

    chats = token_chats()
    input_file = write_jsonl(tmp_path / "in" / "train.jsonl", chats)
    flags = ("--base_model", str(tiny_llama_dir), "--max_seq_length", str(MAX_SEQ_LENGTH))
    tokens = run_validator(tmp_path, input_file, *flags).report["tokens"]

    tokenizer = load_tokenizer(tiny_llama_dir)
    tokenizer.chat_template = training_chat_template(tokenizer)
    config = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_length=MAX_SEQ_LENGTH,
        packing=True,
        packing_strategy="bfd",
        assistant_only_loss=True,
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    trainer = SFTTrainer(
        model=load_causal_lm(tiny_llama_dir),
        args=config,
        train_dataset=Dataset.from_list(chats),
        processing_class=tokenizer,
    )
    prepared = trainer.train_dataset
    assert tokens["processed_per_epoch"] == sum(len(ids) for ids in prepared["input_ids"])
    assert tokens["trained_per_epoch"] == sum(label != -100 for labels in prepared["labels"] for label in labels)


def test_without_a_tokenizer_the_token_section_is_empty_but_present(tmp_path):
    input_file = write(tmp_path / "in" / "train.jsonl", *(good(i) for i in range(10)))

    report = run_validator(tmp_path, input_file).report

    assert report["tokens"]["counted_with"] is None
    for key in ("total", "assistant", "trained_per_epoch"):
        assert report["tokens"][key] is None
    assert not (tmp_path / "out" / "report" / "token_lengths.png").exists()
    assert "Not counted: pass base_model" in (tmp_path / "out" / "report" / "data_report.md").read_text()


@pytest.mark.parametrize("model", ["empty_folder", "no_chat_template"])
def test_a_model_without_a_usable_tokenizer_exits_2_and_writes_nothing(tmp_path, capsys, tiny_llama_dir, model):
    model_dir = tmp_path / "model"
    if model == "empty_folder":
        model_dir.mkdir()
    else:
        shutil.copytree(tiny_llama_dir, model_dir)
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            (model_dir / name).unlink(missing_ok=True)
    input_file = write(tmp_path / "in" / "train.jsonl", *(good(i) for i in range(10)))
    args = validate_chat_jsonl.parse_args(
        ["--input_data", str(input_file), "--base_model", str(model_dir)]
        + [f"--{name}={tmp_path / name}" for name in ("valid_data", "rejected_data", "data_report")]
    )

    assert run_main(args) == 2

    err = capsys.readouterr().err
    assert re.search(r"validate_chat_jsonl: base_model: .*(cannot load a tokenizer|no chat template)", err), err
    assert not list(tmp_path.glob("*_data/*")) and not (tmp_path / "data_report").exists()


# Templates TRL has no training variant of: one without {% generation %} markers, one that refuses system messages
# (as some models' templates do).
PLAIN_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


def _model_with_template(tmp_path: Path, tiny_llama_dir: Path, template: str) -> Path:
    model_dir = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    (model_dir / "chat_template.jinja").write_text(template)
    return model_dir


def test_without_generation_markers_every_token_counts_as_trained(tmp_path, tiny_llama_dir, capsys):
    model_dir = _model_with_template(tmp_path, tiny_llama_dir, PLAIN_TEMPLATE)
    input_file = write_jsonl(tmp_path / "in" / "train.jsonl", token_chats())

    result = run_validator(tmp_path, input_file, "--base_model", str(model_dir), "--max_seq_length", "64")

    tokens = result.report["tokens"]
    assert (tokens["assistant_only_loss"], tokens["assistant"]) == (False, None)
    assert tokens["trained_per_epoch"] == tokens["processed_per_epoch"] < tokens["total"]
    assert "warning: assistant tokens are not counted" in capsys.readouterr().out
    assert all(w.endswith(f"training cuts the last {int(w.split()[1]) - 64}") for w in result.report["first_warnings"])


def test_a_chat_template_that_refuses_a_conversation_names_the_line(tmp_path, tiny_llama_dir, capsys):
    model_dir = _model_with_template(tmp_path, tiny_llama_dir, NO_SYSTEM_TEMPLATE)
    chats = [{"messages": [USER, ASSISTANT]}] * 3 + [{"messages": [SYSTEM, USER, ASSISTANT]}]
    input_file = write_jsonl(tmp_path / "in" / "train.jsonl", chats)
    args = validate_chat_jsonl.parse_args(
        ["--input_data", str(input_file), "--base_model", str(model_dir)]
        + [f"--{name}={tmp_path / name}" for name in ("valid_data", "rejected_data", "data_report")]
    )

    assert run_main(args) == 2

    err = capsys.readouterr().err
    assert "train.jsonl:4: the chat template of model fails on this conversation" in err
    assert "System role not supported" in err
    assert not (tmp_path / "data_report" / "data_report.json").exists()  # the step failed: no report says otherwise


def test_tokens_are_logged_to_mlflow(tmp_path, mlflow_run, tiny_llama_dir):
    client, run_id = mlflow_run
    input_file = write_jsonl(tmp_path / "in" / "train.jsonl", token_chats())

    flags = ("--base_model", str(tiny_llama_dir), "--max_seq_length", str(MAX_SEQ_LENGTH))
    tokens = run_validator(tmp_path, input_file, *flags).report["tokens"]

    run = client.get_run(run_id)
    assert run.data.metrics["tokens_trained_per_epoch"] == tokens["trained_per_epoch"]
    assert run.data.metrics["tokens_total"] == tokens["total"]
    assert run.data.metrics["rule_too_long"] == tokens["records_too_long"]
    assert run.data.params["tokens_counted_with"] == tiny_llama_dir.name
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "data_report")}
    assert "data_report/token_lengths.png" in logged


@pytest.mark.parametrize(
    "make_input", [lambda tmp: tmp / "missing", lambda tmp: write(tmp / "in" / "data.json", good(0))]
)
def test_unusable_input_exits_2_with_a_message(tmp_path, capsys, make_input):
    args = validate_chat_jsonl.parse_args(
        ["--input_data", str(make_input(tmp_path))]
        + [f"--{name}={tmp_path / name}" for name in ("valid_data", "rejected_data", "data_report")]
    )
    assert run_main(args) == 2
    assert re.search(
        r"validate_chat_jsonl: .*(no such file or folder|not a \.jsonl file)", capsys.readouterr().err
    )


def test_thresholds_out_of_range_are_refused(capsys):
    with pytest.raises(SystemExit) as excinfo:
        validate_chat_jsonl.parse_args(
            [
                "--input_data",
                "x",
                "--valid_data",
                "v",
                "--rejected_data",
                "r",
                "--data_report",
                "d",
                "--max_rejected_fraction",
                "1.5",
            ]
        )
    assert excinfo.value.code == 2
    assert "1.5 is outside [0.0, 1.0]" in capsys.readouterr().err


def test_counts_and_report_are_logged_to_mlflow(tmp_path, mlflow_run):
    client, run_id = mlflow_run
    input_file = write(tmp_path / "in" / "train.jsonl", *(good(i) for i in range(10)), BAD_LINES["unknown_role"])

    run_validator(tmp_path, input_file, "--max_rejected_fraction", "0.5")

    run = client.get_run(run_id)
    assert run.data.metrics["records_in"] == 11
    assert run.data.metrics["records_rejected"] == 1
    assert run.data.metrics["rule_unknown_role"] == 1
    assert run.data.params["max_rejected_fraction"] == "0.5"
    logged = {artifact.path for artifact in client.list_artifacts(run_id, "data_report")}
    assert logged == {
        "data_report/data_report.json",
        "data_report/data_report.md",
        "data_report/messages_per_conversation.png",
    }
    assert not any(name.startswith("tokens_") for name in run.data.metrics)  # no tokenizer, no token metrics


def test_standalone_cli_on_the_sample_data(tmp_path):
    # No PYTHONPATH: the script must find chatft in the checkout by itself, as in the README command.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [
            sys.executable, str(SCRIPT.relative_to(REPO)),
            "--input_data", "data/sample",
            "--valid_data", str(tmp_path / "v"),
            "--rejected_data", str(tmp_path / "r"),
            "--data_report", str(tmp_path / "rep"),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "300 records in, 300 valid, 0 rejected, 0 with warnings" in completed.stdout
    sample = REPO / "data" / "sample" / "support_chats.jsonl"
    assert (tmp_path / "v" / "support_chats.jsonl").read_bytes() == sample.read_bytes()


def run_cli(tmp_path: Path, input_data: str | Path, *flags: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--input_data", str(input_data),
            "--valid_data", str(tmp_path / "v"),
            "--rejected_data", str(tmp_path / "r"),
            "--data_report", str(tmp_path / "rep"),
            *flags,
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_standalone_cli_exit_codes_and_no_tracebacks(tmp_path):
    """The contract for users checking files before a run: 0 passed, 1 thresholds exceeded, 2 unusable input,
    and a message, never a traceback."""
    broken = write(tmp_path / "in" / "broken.jsonl", *(good(i) for i in range(9)), BAD_LINES["weight_invalid"])
    failed = run_cli(tmp_path / "failed", broken)
    assert failed.returncode == 1
    assert "broken.jsonl:10: message 2 has weight 0.5; expected 0 or 1" in failed.stderr
    assert "1 of 10 records rejected (10.0%), more than max_rejected_fraction 0.01" in failed.stderr

    passed = run_cli(tmp_path / "passed", broken, "--max_rejected_fraction", "0.1", "--min_valid_records", "9")
    assert passed.returncode == 0, passed.stderr

    missing = run_cli(tmp_path / "missing", tmp_path / "nowhere")
    assert missing.returncode == 2
    assert "no such file or folder" in missing.stderr

    bad_model = run_cli(tmp_path / "bad_model", broken, "--base_model", str(tmp_path / "in"))
    assert bad_model.returncode == 2
    assert "base_model: cannot load a tokenizer" in bad_model.stderr

    for completed in (failed, passed, missing, bad_model):
        assert "Traceback" not in completed.stderr + completed.stdout


def test_sample_data_is_what_the_generator_writes():
    generator = load_script("data_make_sample_data", REPO / "data" / "make_sample_data.py")
    args = generator.parse_args([])
    expected = "".join(
        json.dumps(c, ensure_ascii=False) + "\n" for c in generator.make_conversations(args.count, args.seed)
    )
    assert (REPO / "data" / "sample" / "support_chats.jsonl").read_text(encoding="utf-8") == expected


@pytest.mark.parametrize("preset", ["local", "azure"])
def test_the_pipeline_counts_tokens_with_the_base_model_and_finetunes_max_seq_length(tmp_path, preset):
    from pipelines.finetune_pipeline import build_pipeline, load_components
    from pipelines.settings import PROJECT_ROOT, load_settings

    settings = load_settings(PROJECT_ROOT / "pipelines" / "config" / f"{preset}.yaml")
    job = build_pipeline(settings, base_model_path=str(tmp_path) if preset == "local" else None)
    finetune_default = load_components()["finetune"].inputs["max_seq_length"].default
    expected = settings.step("finetune").get("max_seq_length", finetune_default)
    for node in ("valid_train", "valid_validation"):
        inputs = job.jobs[node].inputs
        assert inputs["base_model"]._data._port_name == "base_model"  # the pipeline's own base_model input
        assert inputs["max_seq_length"]._data == expected == job.jobs["tuned"].inputs["max_seq_length"]._data


def test_spec_loads_offline_and_matches_the_script():
    from azure.ai.ml import load_component

    component = load_component(source=str(COMPONENT_DIR / "component.yml"))
    spec = yaml.safe_load((COMPONENT_DIR / "component.yml").read_text())
    assert (COMPONENT_DIR / "component.yml").read_text().startswith("$schema: https://azuremlschemas")
    assert spec["additional_includes"] == ["../../src/chatft"]
    assert spec["environment"] == "azureml:chatft-cpu:1"
    assert set(component.inputs) == set(spec["inputs"]) and set(component.outputs) == set(spec["outputs"])

    command = " ".join(spec["command"].split())
    parser_flags = {
        option for action in validate_chat_jsonl.build_parser()._actions for option in action.option_strings
    }
    for name, declared in spec["inputs"].items():
        flag = f"--{name} ${{{{inputs.{name}}}}}"
        assert (f"$[[{flag}]]" in command) == bool(declared.get("optional")), name
        assert flag in command and f"--{name}" in parser_flags, name
    for name in spec["outputs"]:
        assert f"--{name} ${{{{outputs.{name}}}}}" in command and f"--{name}" in parser_flags, name
    assert parser_flags - {"-h", "--help"} == {f"--{name}" for name in [*spec["inputs"], *spec["outputs"]]}
    defaults = validate_chat_jsonl.parse_args(
        ["--input_data", "i", "--valid_data", "v", "--rejected_data", "r", "--data_report", "d"]
    )
    assert defaults.max_rejected_fraction == spec["inputs"]["max_rejected_fraction"]["default"]
    assert defaults.min_valid_records == spec["inputs"]["min_valid_records"]["default"]


# ---- screen_harmful: the keyword list and the content classifier (a SIMULATION of Azure AI Content Safety) -------


def _screening_input(tmp_path: Path) -> Path:
    from tests.helpers.chat_data import make_conversations

    records = make_conversations(12)
    records[1]["messages"][-1]["content"] = "First you build a Pipe Bomb from ..."  # the keyword list's phrase
    records[4]["messages"][-1]["content"] = "A reply holding MARK-HATE for the simulated classifier."
    lines = [json.dumps(record).encode() + b"\n" for record in records]
    return write(tmp_path / "in" / "train.jsonl", *lines)


def test_screen_harmful_keep_flags_with_file_and_line_and_keeps_the_record(tmp_path):
    result = run_validator(tmp_path, _screening_input(tmp_path), "--screen_harmful", "keep")
    assert result.exit_code == 0 and result.report["records_valid"] == 12
    assert result.report["rules"]["harmful_flagged"]["records"] == 1
    assert (
        'train.jsonl:2: flagged as harmful: keyword "pipe bomb" from the harmful keyword list; kept for review'
        in (result.report["first_warnings"])
    )


def test_screen_harmful_reject_sets_the_record_aside(tmp_path):
    result = run_validator(
        tmp_path, _screening_input(tmp_path), "--screen_harmful", "reject", "--max_rejected_fraction", "0.5"
    )
    assert result.report["records_valid"] == 11
    assert [(r["file"], r["line"], r["rule"]) for r in result.rejected] == [("train.jsonl", 2, "harmful_rejected")]


def test_screen_harmful_off_by_default(tmp_path):
    result = run_validator(tmp_path, _screening_input(tmp_path))
    assert result.report["records_valid"] == 12 and result.report["rules"]["harmful_flagged"]["records"] == 0


def test_screen_harmful_asks_the_content_classifier_when_configured(tmp_path, monkeypatch):
    from tests.helpers.fake_content_safety import ContentSafetySimulation, FakeCredential

    monkeypatch.setattr("chatft.content_safety._default_credential", FakeCredential)
    with ContentSafetySimulation() as sim:
        sim.rules["MARK-HATE"] = {"Hate": 4}
        monkeypatch.setenv("CONTENT_SAFETY_ENDPOINT", sim.endpoint)
        result = run_validator(tmp_path, _screening_input(tmp_path), "--screen_harmful", "keep")
        assert len(sim.requests) == 11  # every accepted record the keyword list did not flag already
    assert result.report["rules"]["harmful_flagged"]["records"] == 2
    assert any(
        w.startswith("train.jsonl:5: flagged as harmful: Azure AI Content Safety rates it Hate severity 4")
        for w in result.report["first_warnings"]
    )


def test_screen_harmful_with_the_classifier_down_exits_2(tmp_path, monkeypatch, capsys):
    from tests.helpers.fake_content_safety import ContentSafetySimulation, FakeCredential

    monkeypatch.setattr("chatft.content_safety._default_credential", FakeCredential)
    with ContentSafetySimulation() as sim:
        monkeypatch.setenv("CONTENT_SAFETY_ENDPOINT", sim.endpoint)
        sim.status_override = 503
        args = validate_chat_jsonl.parse_args(
            ["--input_data", str(_screening_input(tmp_path)), "--valid_data", str(tmp_path / "v"),
             "--rejected_data", str(tmp_path / "r"), "--data_report", str(tmp_path / "d"), "--screen_harmful", "keep"]
        )  # fmt: skip
        assert run_main(args) == 2
    assert "validate_chat_jsonl: HttpResponseError: (ServiceUnavailable)" in capsys.readouterr().err
