"""Register the fine-tuned model in the MLflow model registry with its lineage and model card; promote it to
``champion`` when the quality gate passed.

The same code runs locally (MLflow on SQLite, set up by the local backend) and on Azure ML (the job's
azureml-mlflow tracking URI): ``mlflow.start_run()`` attaches to the step's run either way. The model is written with
``mlflow.pyfunc.save_model``, uploaded as the run's ``model`` artifacts and registered from ``runs:/<run_id>/model``,
not with ``log_model``, whose LoggedModel API Azure ML's tracking service does not serve (404).

What is registered: the **merged** weights (the LoRA adapter folded into the base), wrapped unchanged in an MLflow
pyfunc (``chat_pyfunc.py``; artifact key ``merged_model``). Not adapter + base reference, because the endpoint
then loads one ordinary Hugging Face folder: no PEFT at serving time, no second download of the base model (on
Azure a registry asset the deployment would otherwise have to resolve and mount), and no per-request adapter
overhead. The cost is storage: each version holds a full copy of the weights (538 MB for SmolLM2-135M in fp32,
~7.6 GB for Phi-3-mini in bf16) instead of an adapter of a few MB.

A failed quality gate stops the step before anything is registered (the evaluate step's run records why), so
deploy_endpoint never sees that model. Otherwise the version is registered with tags for lineage (step and pipeline
run, data fingerprint, base model, method, eval.* metrics, gate verdict) and ``MODEL_CARD.md`` stored with the model
(artifact ``model_card``). A version whose gate passed gets the ``champion`` alias (``chatft.registry``: a tag on Azure
ML, or on any registry without the alias route); one registered without a gate (stand-alone use) stays a candidate.
Writes ``model_info/model_info.json`` (name, version, model_uri, run_id, tags, quality_gate, champion) and
``model_info/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

from chatft.errors import ChatftError, exit_on_error

HERE = Path(__file__).resolve().parent
SPEC = HERE / "component.yml"
# Shipped with the model so that it can serve itself exactly like the endpoint (see additional_includes).
MODEL_CODE = HERE / "chat_pyfunc.py"
CHATFT = HERE / "chatft"  # the library the pyfunc imports (chatft.serving), copied in by additional_includes
# Packages the pyfunc needs (alternatives in order), pinned to the versions that logged it. Listed explicitly:
# MLflow's inference adds torchvision for torch models, which has no CPU build here (PLATFORM_NOTES).
# jinja2 renders chat templates; transformers does not require it.
MODEL_PACKAGES = (("mlflow", "mlflow-skinny"), ("torch",), ("transformers",), ("safetensors",), ("jinja2",))
MAX_METRIC_TAGS = 40  # model version tags are for lineage; the full report stays in eval_report.json
TRAIN_METRICS = "train_metrics.json"  # written by finetune into merged_model/
CARD = "MODEL_CARD.md"
ARTIFACT_PATH = "model"  # the model's folder among the run's artifacts: runs:/<run_id>/model


class RegistrationError(ChatftError, RuntimeError):
    """An input is missing or malformed; the message says what and where."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC, description=__doc__.split("\n\n")[0]).parse_args(argv)


def _read_json(folder: str | Path, name: str) -> dict:
    path = Path(folder) / name
    if not path.is_file():
        raise RegistrationError(f"{path}: not found; the upstream step should have written it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise RegistrationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise RegistrationError(f"{path}: expected a JSON object")
    return data


def read_quality_gate(folder: str | Path | None) -> dict | None:
    """The gate's verdict ({"passed": bool, "reason": ...}), or None without a gate."""
    if folder is None:
        return None
    gate = _read_json(folder, "quality_gate.json")
    if not isinstance(gate.get("passed"), bool):
        path = Path(folder) / "quality_gate.json"
        raise RegistrationError(f'{path}: "passed" must be true or false, got {json.dumps(gate.get("passed"))}')
    return gate


def gate_verdict(gate: dict | None) -> str:
    return "not checked" if gate is None else "passed" if gate["passed"] else "failed"


def metric_tags(report: dict, prefix: str = "eval") -> dict[str, str]:
    """Numeric leaves of the eval report as ``eval.<path>`` tags (lists, strings and booleans are left out)."""
    tags: dict[str, str] = {}

    def walk(node: dict, path: str) -> None:
        for key, value in node.items():
            name = f"{path}.{key}"
            if isinstance(value, dict):
                walk(value, name)
            elif isinstance(value, int | float) and not isinstance(value, bool) and len(tags) < MAX_METRIC_TAGS:
                tags[name] = f"{value:.6g}"

    walk(report, prefix)
    return tags


def lineage_tags(
    args: argparse.Namespace, lineage: dict, fingerprint: str, method: str, report: dict, gate: dict | None
) -> dict[str, str]:
    tags = {
        **lineage,
        "data_fingerprint": fingerprint,
        "base_model": args.base_model_name,
        "method": method,
        "quality_gate": gate_verdict(gate),
    }
    if gate and gate.get("reason"):
        tags["quality_gate_reason"] = str(gate["reason"])[:500]
    tags.update(metric_tags(report))
    return tags


def _pins() -> list[str]:
    pins = []
    for alternatives in MODEL_PACKAGES:
        for name in alternatives:
            try:
                # "2.13.0+cpu" → "2.13.0": a local version label only resolves against the index that built it.
                pins.append(f"{name}=={installed_version(name).split('+')[0]}")
                break
            except PackageNotFoundError:
                continue
        else:
            raise RegistrationError(f"package {alternatives[0]} is not installed; the model could not run")
    return pins


def finetune_params(client, run, tuned_model: Path) -> dict[str, str]:
    """The finetune step's MLflow run parameters, if that run can be found; {} otherwise (the card says so).

    Found as a sibling of this step's run under the pipeline run (Azure ML and the local backend both nest step
    runs that way), or, for a finetune step the local backend reused from an earlier pipeline run, as the run
    whose ``merged_model`` output is this step's ``tuned_model`` folder.
    """
    from mlflow.exceptions import MlflowException

    queries = []
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        queries.append(f"tags.mlflow.parentRunId = '{parent}'")
    if "'" not in str(tuned_model):
        queries.append(f"params.merged_model = '{tuned_model}'")
    for query in queries:
        try:
            found = client.search_runs([run.info.experiment_id], filter_string=query, max_results=50)
        except MlflowException:
            continue  # a registry that cannot filter this way: the card says "not recorded"
        for candidate in found:
            if {"learning_rate", "method"} <= set(candidate.data.params):
                return dict(candidate.data.params)
    return {}


def _context_length(model_dir: Path) -> int | None:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings")
    return value if isinstance(value, int) else None


def _summary(name: str, args: argparse.Namespace, method: str, gate: dict | None, promoted: bool) -> str:
    """The version's registry description: one paragraph (the full card is an artifact of the model)."""
    verdict = gate_verdict(gate)
    reason = f" ({gate['reason']})" if gate and gate.get("reason") else ""
    role = "champion" if promoted else "candidate (not champion)"
    return (
        f"{name}: {args.base_model_name} fine-tuned with {method}, weights merged. Quality gate {verdict}{reason}; "
        f"registered as {role}. Full model card: {CARD} (artifact model_card of the model)."
    )[:1000]


@dataclass
class Inputs:
    """What the upstream steps wrote, checked before MLflow is imported or a byte is copied."""

    gate: dict | None
    report: dict
    split: dict
    fingerprint: str
    model_dir: Path
    train: dict
    requirements: list[str]


def read_inputs(args: argparse.Namespace) -> Inputs:
    """Everything that can refuse the registration: a failed gate, a missing or malformed input, a missing package."""
    gate = read_quality_gate(args.quality_gate)
    if gate and not gate["passed"]:
        raise RegistrationError(
            f"{Path(args.quality_gate) / 'quality_gate.json'}: quality gate failed: "
            f"{gate.get('reason', 'no reason given')}. Nothing was registered and nothing will be deployed; "
            "improve the model or adjust the gate's thresholds in the evaluate step, then re-run."
        )
    report = _read_json(args.eval_report, "eval_report.json")
    split = _read_json(args.split_info, "split_info.json")
    fingerprint = split.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise RegistrationError(f'{Path(args.split_info) / "split_info.json"}: no "fingerprint" string')
    for needed in (MODEL_CODE, CHATFT):
        if not needed.exists():
            raise RegistrationError(f"{needed}: missing; run this script from the component snapshot")
    from chatft.model_source import ModelNotFoundError, find_model_dir

    try:
        model_dir = find_model_dir(args.tuned_model)
    except ModelNotFoundError as err:
        raise RegistrationError(f"tuned_model: {err}") from None
    train = _read_json(model_dir, TRAIN_METRICS) if (model_dir / TRAIN_METRICS).is_file() else {}
    return Inputs(gate, report, split, fingerprint, model_dir, train, _pins())


def _save_model(inputs: Inputs, card: str, tmp: Path, run_id: str) -> Path:
    """The pyfunc folder (MLmodel, code, the merged model and the card as artifacts), written under ``tmp``."""
    import mlflow
    from mlflow.models import Model

    card_path = tmp / CARD
    card_path.write_text(card, encoding="utf-8")
    saved = tmp / ARTIFACT_PATH
    mlflow.pyfunc.save_model(
        path=saved,
        python_model=str(MODEL_CODE),
        # The key merged_model is read by evaluate (the champion's weights) and by chat_pyfunc.
        artifacts={"merged_model": str(inputs.model_dir), "model_card": str(card_path)},
        code_paths=[str(CHATFT)],
        pip_requirements=inputs.requirements,
        mlflow_model=Model(artifact_path=ARTIFACT_PATH, run_id=run_id),  # lineage in MLmodel
    )
    return saved


def _card(args: argparse.Namespace, inputs: Inputs, lineage: dict, params: dict, promote: bool, previous) -> str:
    from model_card import render

    return render(
        model_name=args.model_name,
        base_model=args.base_model_name,
        lineage=lineage,
        split=inputs.split,
        train=inputs.train,
        params=params,
        report=inputs.report,
        gate=inputs.gate,
        promoted=promote,
        previous_champion=f"{args.model_name} version {previous.version}" if previous else None,
        context_length=_context_length(inputs.model_dir),
    )


def _register(args: argparse.Namespace, inputs: Inputs, run, tmp: Path) -> tuple[dict, str]:
    """Register the version in ``run``, promote it on a passed gate; return (model_info, the card's Markdown)."""
    import mlflow
    from mlflow import MlflowClient

    from chatft.registry import get_champion, on_azure, set_champion

    gate, promote = inputs.gate, bool(inputs.gate and inputs.gate["passed"])
    client = MlflowClient()
    azure = on_azure(mlflow.get_registry_uri())
    params = finetune_params(client, run, Path(args.tuned_model))
    method = str(inputs.train.get("method") or params.get("method") or "unknown")
    lineage = {"run_id": run.info.run_id}
    if run.data.tags.get("mlflow.parentRunId"):
        lineage["pipeline_run_id"] = run.data.tags["mlflow.parentRunId"]
    tags = lineage_tags(args, lineage, inputs.fingerprint, method, inputs.report, gate)
    previous = get_champion(client, args.model_name, azure)
    card = _card(args, inputs, lineage, params, promote, previous)
    # save_model + log_artifacts + register_model("runs:/..."), not log_model: MLflow 3's log_model creates a
    # LoggedModel (POST /api/2.0/mlflow/logged-models), which Azure ML's tracking service answers with 404
    # (Azure/azure-sdk-for-python#44896). These three use only run-artifact and model-registry routes, which
    # both Azure ML and a local MLflow store serve: one code path for both.
    mlflow.log_artifacts(str(_save_model(inputs, card, tmp, run.info.run_id)), artifact_path=ARTIFACT_PATH)
    # A runs:/ URI whose folder holds MLmodel registers that folder as the version's source (no LoggedModel).
    registered = mlflow.register_model(f"runs:/{run.info.run_id}/{ARTIFACT_PATH}", args.model_name, tags=tags)
    version = str(registered.version)
    client.update_model_version(
        args.model_name, version, description=_summary(args.model_name, args, method, gate, promote)
    )
    champion_via = set_champion(client, args.model_name, version, azure) if promote else None
    mlflow.set_tags({**tags, "registered_model": f"{registered.name}:{version}"})
    mlflow.log_text(card, CARD)
    info = {
        "name": registered.name,
        "version": version,
        "model_uri": f"models:/{registered.name}/{version}",
        "run_id": run.info.run_id,
        "tags": tags,
        "quality_gate": gate_verdict(gate),
        "quality_gate_reason": gate.get("reason") if gate else None,
        "champion": promote,
        "champion_via": champion_via,
        "previous_champion": str(previous.version) if previous else None,
    }
    return info, card


def main(args: argparse.Namespace) -> dict:
    inputs = read_inputs(args)

    import mlflow

    with mlflow.start_run() as run, tempfile.TemporaryDirectory(prefix="register_model-") as tmp:
        info, card = _register(args, inputs, run, Path(tmp))

    out = Path(args.model_info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (out / CARD).write_text(card, encoding="utf-8")
    gate = inputs.gate
    role = (
        f"champion (via {info['champion_via']})"
        if info["champion"]
        else f"candidate only: quality gate {gate_verdict(gate)}"
    )
    print(f"registered {info['model_uri']} from {inputs.model_dir} (run {info['run_id']}): {role}", flush=True)
    return info


if __name__ == "__main__":
    exit_on_error("register_model", main, parse_args())
