"""register_model.py's input checks, in-process: they all run before MLflow is imported or a byte is copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.components import load_script
from tests.helpers.registration import COMPONENT, REPO, upstream, write_json
from tests.helpers.training import cli_flags

script = load_script("register_model_under_test", COMPONENT / "register_model.py")


def parse(tuned_model: Path, folders: dict[str, Path], out: Path):
    flags = {"tuned_model": tuned_model, **folders, "model_name": "m", "base_model_name": "b", "model_info": out}
    return script.parse_args(cli_flags(flags))


@pytest.mark.parametrize("gate", [{"passed": "false", "reason": "x"}, {"reason": "x"}, {"passed": 1}])
def test_quality_gate_must_say_passed(tmp_path, gate):
    with pytest.raises(script.RegistrationError, match='quality_gate.json: "passed" must be true or false'):
        script.read_quality_gate(str(write_json(tmp_path, "quality_gate.json", gate)))


def test_quality_gate_folder_without_the_file_is_an_error(tmp_path):
    with pytest.raises(script.RegistrationError, match="quality_gate.json: not found"):
        script.read_quality_gate(str(tmp_path))


def test_gate_verdicts(tmp_path):
    assert script.gate_verdict(script.read_quality_gate(None)) == "not checked"
    failed = script.read_quality_gate(str(write_json(tmp_path, "quality_gate.json", {"passed": False})))
    assert script.gate_verdict(failed) == "failed"


def test_missing_fingerprint_is_an_error(tmp_path, tiny_llama_dir):
    folders = upstream(tmp_path, None)
    write_json(folders["split_info"], "split_info.json", {"n": 20})
    args = parse(tiny_llama_dir, folders, tmp_path / "o")
    with pytest.raises(script.RegistrationError, match='split_info.json: no "fingerprint"'):
        script.main(args)


def test_tuned_model_without_a_checkpoint_is_an_error(tmp_path, monkeypatch):
    folders = upstream(tmp_path, None)
    (tmp_path / "empty").mkdir()
    args = parse(tmp_path / "empty", folders, tmp_path / "o")
    monkeypatch.setattr(script, "CHATFT", REPO / "src" / "chatft")  # beside the script in a snapshot
    with pytest.raises(script.RegistrationError, match="tuned_model: .*no config.json with weights found"):
        script.main(args)


def test_metric_tags_flatten_numbers_only():
    report = {"a": 1, "b": {"c": 0.123456789, "d": [1, 2], "e": True, "f": None, "g": "text"}}
    assert script.metric_tags(report) == {"eval.a": "1", "eval.b.c": "0.123457"}
