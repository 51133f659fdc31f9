"""validate_chat_jsonl screen_harmful: the keyword list and the content classifier (a SIMULATION of Azure AI Content
Safety)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.chat_data import make_conversations
from tests.helpers.validate_runs import run_main, run_validator, validate_chat_jsonl, write

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


def _screening_input(tmp_path: Path) -> Path:

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
