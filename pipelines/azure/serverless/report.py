"""Step 5 of the serverless path: the losses the service reported, as the pipeline's eval_report with its quality
gate, and one MLflow run like the pipeline's (parameters, data fingerprints, metrics, the report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipelines.azure.plan import FINGERPRINT_TAG
from pipelines.azure.serverless.plan import Plan


def read_service_metrics(tracking_uri: str, run_id: str, names: dict[str, str]) -> dict[str, list[float]]:
    """The loss series the service's run logged (Azure ML jobs are MLflow runs whose run id is the job name)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    series = {}
    for label, key in names.items():
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        series[label] = [m.value for m in history]
    return series


def champion_perplexity(tracking_uri: str, experiment_name: str) -> tuple[float, str] | None:
    """The best validation perplexity of earlier serverless runs whose gate passed, with its run id."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.chatft_path = 'serverless' and metrics.quality_gate_passed = 1",
        order_by=["metrics.tuned_perplexity ASC"],
        max_results=1,
    )
    if not runs or "tuned_perplexity" not in runs[0].data.metrics:
        return None
    return runs[0].data.metrics["tuned_perplexity"], runs[0].info.run_id


def _check(name: str, passed: bool | None, detail: str) -> dict:
    """One quality-gate check; ``passed`` None: it could not run."""
    return {"name": name, "ran": passed is not None, "passed": passed, "detail": detail}


def gate_checks(plan: Plan, validation: list[float], champion) -> tuple[list[dict], dict]:
    """(checks, tuned metrics) on the reported validation losses; ``champion`` is (perplexity, run id) or None."""
    checks = [
        _check(
            "beats_base",
            None,
            "the service reports no loss of the base model on this data, so base vs tuned is not compared",
        )
    ]
    if not validation or not all(math.isfinite(v) for v in validation):
        metric = plan.serverless.metrics["validation_loss"]
        return [*checks, _check("validation_loss_reported", False, f"the job logged no finite {metric!r} series")], {}
    tuned = {"loss": validation[-1], "perplexity": math.exp(validation[-1])}
    if len(validation) > 1:
        detail = f"validation loss {validation[0]:.4f} → {validation[-1]:.4f} during training"
        checks.append(_check("validation_loss_fell", validation[-1] <= validation[0], detail))
    if champion is None:
        checks.append(_check("no_regression_vs_champion", None, "no earlier serverless run passed the gate"))
        return checks, tuned
    ratio = plan.serverless.max_champion_ratio
    passed = tuned["perplexity"] <= ratio * champion[0]
    detail = (
        f"tuned perplexity {tuned['perplexity']:.3f} {'<=' if passed else '>'} {ratio:g} × champion run "
        f"{champion[1]} perplexity {champion[0]:.3f}"
    )
    checks.append(_check("no_regression_vs_champion", passed, detail))
    return checks, tuned


def eval_report(plan: Plan, job_name: str, series: dict[str, list[float]], champion) -> dict:
    """The service's losses in the pipeline's eval_report form, and the gate on what they allow to check."""
    checks, tuned = gate_checks(plan, series.get("validation_loss") or [], champion)
    training = series.get("training_loss") or []
    if training:
        tuned["train_loss"] = training[-1]
    failed = [c for c in checks if c["ran"] and not c["passed"]]
    reason = "; ".join(c["detail"] for c in (failed or checks))
    return {
        "base_model": plan.settings.base_model,
        "tuned_model": f"{plan.serverless.output_model_name_prefix} (job {job_name})",
        "validation_chats": plan.data.validation.records,
        "metrics": {"tuned": tuned},
        "metric_series": series,
        "reported_by": "the serverless fine-tuning service (its MLflow run), not measured by this project",
        "quality_gate": {
            "passed": not failed,
            "reason": reason,
            "checks": checks,
            "max_champion_ratio": plan.serverless.max_champion_ratio,
        },
        "samples": [],
    }


def track(plan: Plan, job, report: dict, tracking_uri: str, folder: Path) -> str:
    """One MLflow run like the pipeline's: parameters, the data fingerprints, the reported metrics, the report."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(plan.settings.experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(plan.settings.experiment_name)
    run = client.create_run(
        experiment_id,
        run_name=f"serverless-{job.name}",
        tags={
            "chatft_path": "serverless",
            "job_name": job.name,
            "studio_url": job.studio_url or "",
            FINGERPRINT_TAG: plan.data.split_info.get("fingerprint", ""),
            "train_fingerprint": plan.data.train.fingerprint,
            "validation_fingerprint": plan.data.validation.fingerprint,
            "base_model": plan.settings.base_model,
            "quality_gate": f"{'passed' if report['quality_gate']['passed'] else 'failed'}: "
            f"{report['quality_gate']['reason']}"[:5000],
        },
    )
    run_id = run.info.run_id
    for name, value in {**plan.serverless.hyperparameters, "task": plan.job.task}.items():
        client.log_param(run_id, name, value)
    for label, values in report["metric_series"].items():
        for step, value in enumerate(values):
            client.log_metric(run_id, label, value, step=step)
    for name, value in report["metrics"]["tuned"].items():
        client.log_metric(run_id, f"tuned_{name}", value)
    client.log_metric(run_id, "quality_gate_passed", float(report["quality_gate"]["passed"]))
    client.log_artifact(run_id, str(folder / "eval_report.json"), artifact_path="eval_report")
    client.set_terminated(run_id)
    return run_id
