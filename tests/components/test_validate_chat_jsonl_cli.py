"""validate_chat_jsonl from the outside: flags and exit codes, the spec, MLflow, the sample data and the pipeline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.components import load_script
from tests.helpers.validate_runs import (
    BAD_LINES,
    COMPONENT_DIR,
    REPO,
    SCRIPT,
    good,
    run_main,
    run_validator,
    start_step_run,
    validate_chat_jsonl,
    write,
)

# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


@pytest.mark.parametrize(
    "make_input", [lambda tmp: tmp / "missing", lambda tmp: write(tmp / "in" / "data.json", good(0))]
)
def test_unusable_input_exits_2_with_a_message(tmp_path, capsys, make_input):
    args = validate_chat_jsonl.parse_args(
        ["--input_data", str(make_input(tmp_path))]
        + [f"--{name}={tmp_path / name}" for name in ("valid_data", "rejected_data", "data_report")]
    )
    assert run_main(args) == 2
    assert re.search(r"validate_chat_jsonl: .*(no such file or folder|not a \.jsonl file)", capsys.readouterr().err)


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


@pytest.fixture
def mlflow_run(mlflow_store, monkeypatch):
    return start_step_run(mlflow_store, monkeypatch)


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
