"""validate_chat_jsonl with base_model: tokens counted with the chat template as training counts them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.validate_runs import (
    ASSISTANT,
    SYSTEM,
    USER,
    good,
    run_main,
    run_validator,
    start_step_run,
    validate_chat_jsonl,
    write,
)

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


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


@pytest.fixture
def mlflow_run(mlflow_store, monkeypatch):
    return start_step_run(mlflow_store, monkeypatch)


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
