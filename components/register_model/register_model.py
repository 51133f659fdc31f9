"""Register the fine-tuned model in the MLflow model registry, with its lineage, if the quality gate passed.

The same code runs locally (MLflow on SQLite, set up by the local backend) and on Azure ML (the job's
azureml-mlflow tracking URI): ``mlflow.start_run()`` attaches to the step's run either way.

The model is logged as an MLflow pyfunc that wraps the merged Hugging Face folder unchanged (``chat_pyfunc.py``
explains what it serves). Writes ``model_info/model_info.json``: name, version, model_uri, run_id, tags.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Shipped with the model so that it can serve itself exactly like the endpoint (see additional_includes).
MODEL_CODE = HERE / "chat_pyfunc.py"
SCORE_SCRIPT = HERE / "score.py"
# Packages the pyfunc needs (alternatives in order), pinned to the versions that logged it. Listed explicitly:
# MLflow's inference adds torchvision for torch models, which has no CPU build here (PLATFORM_NOTES).
# jinja2 renders chat templates; transformers does not require it.
MODEL_PACKAGES = (("mlflow", "mlflow-skinny"), ("torch",), ("transformers",), ("safetensors",), ("jinja2",))
MAX_METRIC_TAGS = 40  # model version tags are for lineage; the full report stays in eval_report.json


class RegistrationError(RuntimeError):
    """An input is missing or malformed, or the quality gate said no; the message says what and where."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuned_model", required=True, help="folder holding the merged Hugging Face checkpoint")
    parser.add_argument("--eval_report", required=True, help="folder with eval_report.json")
    parser.add_argument("--quality_gate", help="folder with quality_gate.json; passed=false refuses registration")
    parser.add_argument("--split_info", required=True, help="folder with split_info.json (its data fingerprint)")
    parser.add_argument("--model_name", required=True, help="registered model name")
    parser.add_argument("--base_model_name", required=True, help="the base model, recorded for lineage")
    parser.add_argument("--model_info", required=True, help="output folder for model_info.json")
    return parser.parse_args(argv)


def _read_json(folder: str, name: str) -> dict:
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


def check_quality_gate(folder: str | None) -> dict | None:
    """The gate's verdict, or None without a gate. Raises when it did not pass: nothing may be registered."""
    if folder is None:
        return None
    gate = _read_json(folder, "quality_gate.json")
    path = Path(folder) / "quality_gate.json"
    if not isinstance(gate.get("passed"), bool):
        raise RegistrationError(f'{path}: "passed" must be true or false, got {json.dumps(gate.get("passed"))}')
    if not gate["passed"]:
        raise RegistrationError(
            f"{path}: quality gate failed: {gate.get('reason', 'no reason given')}. The model was not registered; "
            "improve the model or adjust the gate's thresholds in the evaluate step, then re-run."
        )
    return gate


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


def lineage_tags(args: argparse.Namespace, run_id: str, fingerprint: str, report: dict, gate: dict | None) -> dict:
    tags = {
        "run_id": run_id,
        "data_fingerprint": fingerprint,
        "base_model": args.base_model_name,
        "quality_gate": "passed" if gate else "not checked",
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


def main(args: argparse.Namespace) -> None:
    # Everything that can refuse the registration is checked before MLflow is imported or a byte is copied.
    gate = check_quality_gate(args.quality_gate)
    report = _read_json(args.eval_report, "eval_report.json")
    split = _read_json(args.split_info, "split_info.json")
    fingerprint = split.get("fingerprint")
    if not isinstance(fingerprint, str) or not fingerprint:
        raise RegistrationError(f'{Path(args.split_info) / "split_info.json"}: no "fingerprint" string')
    for needed in (MODEL_CODE, SCORE_SCRIPT, HERE / "chatft"):
        if not needed.exists():
            raise RegistrationError(f"{needed}: missing; run this script from the component snapshot")
    from chatft.model_source import ModelNotFoundError, find_model_dir

    try:
        model_dir = find_model_dir(args.tuned_model)
    except ModelNotFoundError as err:
        raise RegistrationError(f"tuned_model: {err}") from None
    requirements = _pins()

    import mlflow

    with mlflow.start_run() as run:
        tags = lineage_tags(args, run.info.run_id, fingerprint, report, gate)
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"merged_model": str(model_dir)},
            code_paths=[str(SCORE_SCRIPT), str(HERE / "chatft")],
            pip_requirements=requirements,
        )
        registered = mlflow.register_model(logged.model_uri, args.model_name, tags=tags)
        mlflow.set_tags({**tags, "registered_model": f"{registered.name}:{registered.version}"})

    info = {
        "name": registered.name,
        "version": str(registered.version),
        "model_uri": f"models:/{registered.name}/{registered.version}",
        "run_id": run.info.run_id,
        "tags": tags,
    }
    out = Path(args.model_info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"registered {info['model_uri']} from {model_dir} (run {info['run_id']})", flush=True)


if __name__ == "__main__":
    try:
        main(parse_args())
    except RegistrationError as err:
        sys.exit(f"register_model: {err}")
