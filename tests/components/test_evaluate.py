"""evaluate.py run for real: a tiny Llama before and after a short fine-tune, report contents and the quality gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.chat_data import make_conversations
from tests.helpers.components import load_script
from tests.helpers.training import cli_flags, run_finetune, write_chat_splits

REPO = Path(__file__).resolve().parents[2]


# Every MLflow run the scripts start goes to the session's test store (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("mlflow_env")


evaluate = load_script("component_evaluate", REPO / "components" / "evaluate" / "evaluate.py")


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    return write_chat_splits(tmp_path_factory.mktemp("chats"))


@pytest.fixture(scope="module")
def tuned(tiny_llama_dir, chats, tmp_path_factory, mlflow_store) -> Path:
    """The tiny Llama after 8 LoRA steps on the train chats: the merged_model output."""
    out = tmp_path_factory.mktemp("finetune")
    uri, _, experiment_id = mlflow_store
    with pytest.MonkeyPatch.context() as patch:  # module scope: the autouse env fixture has not run yet
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)
        return run_finetune(tiny_llama_dir, chats / "train", out, max_steps=8, learning_rate=1e-2, max_seq_length=256)


def run_evaluate(base: Path, tuned: Path, chats: Path, out: Path, **inputs) -> dict:
    flags = {
        "base_model": base,
        "tuned_model": tuned,
        "validation_data": chats / "validation",
        "eval_report": out / "eval_report",
        "quality_gate": out / "quality_gate",
        **inputs,
    }
    return evaluate.main(evaluate.parse_args(cli_flags(flags)))


def test_spec_loads_and_its_command_passes_every_input_and_output():
    from azure.ai.ml import load_component

    path = REPO / "components" / "evaluate" / "component.yml"
    component = load_component(source=path)
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, port in spec["inputs"].items():
        assert f"--{name} ${{{{inputs.{name}}}}}" in component.command
        if port["type"] in ("integer", "number"):
            assert {"min", "max", "default"} <= set(port), f"{name} needs min/max/default"
    for name in spec["outputs"]:
        assert f"--{name} ${{{{outputs.{name}}}}}" in component.command


def test_report_compares_both_models_and_the_gate_passes(tiny_llama_dir, tuned, chats, tmp_path, mlflow_store, capsys):
    report = run_evaluate(tiny_llama_dir, tuned, chats, tmp_path)

    base, tuned_metrics = report["metrics"]["base"], report["metrics"]["tuned"]
    for metrics in (base, tuned_metrics):
        assert {"loss", "perplexity", "token_accuracy", "rougeL", "assistant_tokens"} <= set(metrics)
        assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["loss"])
    # Both are scored on the same assistant tokens: the answers and their <|im_end|>.
    assert base["assistant_tokens"] == tuned_metrics["assistant_tokens"] > 0
    assert tuned_metrics["loss"] < base["loss"]  # fine-tuning helped on chats like its training data
    assert report["validation_chats"] == 6 and len(report["samples"]) == 3  # num_generation_samples default
    first = report["samples"][0]
    assert first["reference"] == make_conversations(6, seed=1)[0]["messages"][-1]["content"]
    assert first["prompt"][-1]["role"] == "user" and {"answer", "rougeL"} <= set(first["tuned"])

    gate = json.loads((tmp_path / "quality_gate" / "quality_gate.json").read_text())
    assert gate["passed"] is True and gate["max_perplexity_ratio"] == 1.0
    assert "<=" in gate["reason"] and gate["metrics"] == json.loads(json.dumps(report["metrics"]))
    # No model_name: the champion check is skipped, and the gate says so.
    assert [(c["name"], c["ran"]) for c in gate["checks"]] == [
        ("beats_base", True),
        ("no_regression_vs_champion", False),
        ("keeps_refusals", True),  # the safety checks (tests/components/test_safety_gate.py)
        ("no_over_refusal", True),
    ]
    assert "no_regression_vs_champion skipped: no model_name given" in gate["reason"]
    assert json.loads((tmp_path / "eval_report" / "eval_report.json").read_text())["quality_gate"]["passed"] is True

    markdown = (tmp_path / "eval_report" / "eval_report.md").read_text()
    assert "| metric | base | tuned | change |" in markdown and "| perplexity |" in markdown
    assert "## Answer 3" in markdown and "**Quality gate: passed**" in markdown
    assert "- no_regression_vs_champion: skipped — no model_name given" in markdown
    # summary.md: the table and the verdict alone, what `make run` prints at the end (pipelines/run.py).
    summary = (tmp_path / "eval_report" / "summary.md").read_text()
    assert summary.startswith("| metric | base | tuned | change |") and summary.strip() in markdown
    assert "**Quality gate: passed**" in summary and "## Answer" not in summary
    assert "| next-token accuracy |" in capsys.readouterr().out  # make run shows the table

    _, client, experiment_id = mlflow_store
    run = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.metrics["tuned_perplexity"] == pytest.approx(tuned_metrics["perplexity"])
    assert run.data.metrics["quality_gate_passed"] == 1.0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"eval_report", "quality_gate"}


@pytest.mark.parametrize(("factor", "passes"), [(0.99, False), (1.01, True)])
def test_gate_follows_max_perplexity_ratio(factor, passes, tiny_llama_dir, tuned, chats, tmp_path):
    """The gate flips exactly where the tuned/base perplexity ratio lies."""
    first = run_evaluate(tiny_llama_dir, tuned, chats, tmp_path / "first", num_generation_samples=0)
    ratio = first["metrics"]["tuned"]["perplexity"] / first["metrics"]["base"]["perplexity"]
    report = run_evaluate(tiny_llama_dir, tuned, chats, tmp_path / "gated", max_perplexity_ratio=ratio * factor)
    gate = json.loads((tmp_path / "gated" / "quality_gate" / "quality_gate.json").read_text())
    assert gate["passed"] is passes and report["quality_gate"]["passed"] is passes
    assert ("FAILED" in (tmp_path / "gated" / "eval_report" / "eval_report.md").read_text()) is not passes


def test_bad_validation_line_names_file_and_line(tiny_llama_dir, tmp_path):
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "val.jsonl").write_text(json.dumps(make_conversations(1)[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(evaluate.EvalError, match=r"val\.jsonl:2: not a"):
        run_evaluate(tiny_llama_dir, tiny_llama_dir, tmp_path, tmp_path / "out")


def register_champion(name: str, model_dir: Path, alias: bool = True) -> str:
    """Register ``model_dir`` as a version of ``name`` the way register_model does (a pyfunc whose artifact
    ``merged_model`` is the Hugging Face folder) in the test store; point the champion alias at it."""
    import mlflow
    from mlflow import MlflowClient

    class Unused(mlflow.pyfunc.PythonModel):  # evaluate reads the artifact, never this code
        def predict(self, context, model_input: list[str]) -> list[str]:
            return model_input

    with mlflow.start_run():
        logged = mlflow.pyfunc.log_model(
            name="model", python_model=Unused(), artifacts={"merged_model": str(model_dir)}, pip_requirements=["mlflow"]
        )
    version = mlflow.register_model(logged.model_uri, name).version
    if alias:
        MlflowClient().set_registered_model_alias(name, "champion", str(version))
    return str(version)


def test_the_champion_is_scored_and_a_tuned_model_that_beats_it_passes(tiny_llama_dir, tuned, chats, tmp_path):
    version = register_champion("chat-ft-weaker-champion", tiny_llama_dir)  # the untrained base as champion
    report = run_evaluate(
        tiny_llama_dir, tuned, chats, tmp_path, model_name="chat-ft-weaker-champion", num_generation_samples=1
    )

    metrics, gate = report["metrics"], json.loads((tmp_path / "quality_gate" / "quality_gate.json").read_text())
    assert metrics["champion"]["perplexity"] == pytest.approx(metrics["base"]["perplexity"])  # same weights
    assert metrics["champion"]["assistant_tokens"] == metrics["tuned"]["assistant_tokens"]
    assert gate["passed"] is True and all(check["ran"] and check["passed"] for check in gate["checks"])
    assert gate["champion"]["model_uri"] == f"models:/chat-ft-weaker-champion/{version}"
    assert f"champion chat-ft-weaker-champion v{version} perplexity" in gate["reason"]
    markdown = (tmp_path / "eval_report" / "eval_report.md").read_text()
    assert f"| champion (v{version}) | tuned vs champion |" in markdown


def test_a_tuned_model_that_regresses_against_the_champion_fails_the_gate(tiny_llama_dir, tuned, chats, tmp_path):
    """The tuned model beats the base but not the champion (itself, with a tolerance below 1): the gate fails."""
    version = register_champion("chat-ft-stronger-champion", tuned)
    report = run_evaluate(
        tiny_llama_dir,
        tuned,
        chats,
        tmp_path,
        model_name="chat-ft-stronger-champion",
        max_champion_ratio=0.99,
        num_generation_samples=0,
    )

    gate = json.loads((tmp_path / "quality_gate" / "quality_gate.json").read_text())
    assert gate["passed"] is False and report["quality_gate"]["passed"] is False
    checks = {check["name"]: check for check in gate["checks"]}
    assert checks["beats_base"]["passed"] is True and checks["no_regression_vs_champion"]["passed"] is False
    # The reason names only what failed, with the numbers.
    assert gate["reason"].startswith("tuned perplexity") and "beats_base" not in gate["reason"]
    assert f"> 0.99 × champion chat-ft-stronger-champion v{version} perplexity" in gate["reason"]
    assert "**Quality gate: FAILED**" in (tmp_path / "eval_report" / "eval_report.md").read_text()


def test_no_champion_or_another_tokenizer_skips_the_champion_check_and_says_why(
    tiny_llama_dir, tiny_phi3_dir, tuned, chats, tmp_path
):
    register_champion("chat-ft-no-alias", tiny_llama_dir, alias=False)  # registered, never promoted
    register_champion("chat-ft-other-base", tiny_phi3_dir)  # a champion fine-tuned from another base model
    expected = {
        "chat-ft-never-registered": "no version of registered model 'chat-ft-never-registered' is champion yet",
        "chat-ft-no-alias": "no version of registered model 'chat-ft-no-alias' is champion yet",
        "chat-ft-other-base": "has a different tokenizer (another base model), so its perplexity is not comparable",
    }
    for name, why in expected.items():
        out = tmp_path / name
        run_evaluate(tiny_llama_dir, tuned, chats, out, model_name=name, num_generation_samples=0)
        gate = json.loads((out / "quality_gate" / "quality_gate.json").read_text())
        champion_check = gate["checks"][1]
        assert gate["passed"] is True and champion_check["ran"] is False and why in champion_check["detail"], name
        assert "champion" not in gate["metrics"] and "no_regression_vs_champion skipped: " in gate["reason"]


def test_with_a_foundry_project_the_safety_answers_are_rated_by_its_evaluators(
    tiny_llama_dir, chats, tmp_path, mlflow_store, monkeypatch
):
    """Against a SIMULATION of the project's evaluation service (tests/helpers/fake_foundry_evaluation.py)."""
    from tests.helpers.fake_content_safety import FakeCredential
    from tests.helpers.fake_foundry_evaluation import FoundryEvaluationSimulation

    monkeypatch.setattr("chatft.safety_judges._credential", FakeCredential)  # the compute's identity, simulated
    with FoundryEvaluationSimulation() as sim:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(sim.ca_file))
        report = run_evaluate(tiny_llama_dir, tiny_llama_dir, chats, tmp_path, foundry_project=sim.project)
    judged = report["safety"]["azure_ai_evaluation"]
    prompts = report["safety"]["harmful_prompts"] + report["safety"]["benign_prompts"]
    for name in ("base", "tuned"):
        summary = judged["summary"][name]
        assert summary["rated"] + summary["unrated"] == prompts
        assert summary["violence_defect_rate"] in (None, 0.0)  # no marker rules: the simulation rates all 0
    rated = sum(judged["summary"][name]["rated"] for name in ("base", "tuned"))
    assert len(sim.requests) == 4 * rated  # four categories per non-empty answer
    assert "### Azure AI Evaluation safety evaluators" in (tmp_path / "eval_report" / "eval_report.md").read_text()
    _, client, experiment_id = mlflow_store
    run = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.metrics["tuned_rated"] == judged["summary"]["tuned"]["rated"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"foundry_project": "https://contoso.example/"}, "expected a Foundry project endpoint"),
        ({"foundry_project": "https://c.services.ai.azure.com/api/projects/p", "safety_check": False}, "safety_check"),
    ],
)
def test_an_unusable_foundry_project_fails_before_any_model_is_scored(tiny_llama_dir, chats, tmp_path, inputs, message):
    from chatft.safety_judges import FoundryProjectError

    with pytest.raises(FoundryProjectError, match=message):
        run_evaluate(tiny_llama_dir, tiny_llama_dir, chats, tmp_path, **inputs)
    assert not (tmp_path / "eval_report").exists()
