"""Run an azure-ai-ml ``PipelineJob`` on this machine, the way Azure ML would.

For each node, in dependency order:
  1. snapshot the component's ``code`` folder plus its ``additional_includes`` (as Azure ML uploads them);
  2. resolve ``${{inputs.*}}`` / ``${{outputs.*}}`` and the optional ``$[[...]]`` blocks to local values;
  3. reuse the outputs of an earlier run when the step is deterministic and its code, environment,
     command, input contents and parameters are all unchanged (Azure ML's reuse rule), else
  4. run the command with bash in the snapshot folder, as one MLflow child run of the pipeline run.

Everything is written under ``output_root``; inputs must live in the project or under ``output_root``.
Outputs of an interrupted attempt are kept, so a re-run continues from its checkpoints (like a
pre-empted Azure node whose mounted outputs survive). Each of those concepts has its module in ``pipelines/local/``;
this one runs the steps in order and records them in MLflow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import sdk_private
from pipelines.local.cache import StepFolder, step_key
from pipelines.local.commands import resolve_command
from pipelines.local.environ import MALLOC_TUNABLES, step_env
from pipelines.local.hashing import FileHashMemo, hash_path
from pipelines.local.inputs import InputResolver, path_inputs, topological_order
from pipelines.local.launch import launch, run_ranks
from pipelines.local.ranks import RankGroup, distributed_layout, rank_env
from pipelines.local.results import LocalRunError, PipelineResult, StepResult
from pipelines.local.snapshot import snapshot

# The names callers import from here (bench/, pipelines/azure/, tests) besides LocalBackend.
__all__ = [
    "LocalBackend",
    "LocalRunError",
    "PipelineResult",
    "StepResult",
    "RankGroup",
    "distributed_layout",
    "hash_path",
    "rank_env",
    "resolve_command",
    "run_ranks",
]
_MALLOC_TUNABLES = MALLOC_TUNABLES  # bench/bench_finetune.py gives its runs what every step gets


@dataclass
class _Tracking:
    """The MLflow client, experiment and parent run that the steps' child runs hang under."""

    client: Any
    experiment_id: str
    parent_id: str


class LocalBackend:
    """Executes a PipelineJob's nodes as local subprocesses, with step reuse and MLflow tracking."""

    def __init__(
        self,
        output_root: Path,
        project_root: Path,
        force_rerun: bool = False,
        stream_logs: bool = True,
        offline: bool = True,
        tracking_uri: str | None = None,
    ):
        self.output_root = output_root.resolve()
        self.project_root = project_root.resolve()
        self.force_rerun = force_rerun
        self.stream_logs = stream_logs
        self.offline = offline
        self.output_root.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or f"sqlite:///{self.output_root / 'mlflow.db'}"
        self.artifact_root = self.output_root / "mlartifacts"
        self.memo = FileHashMemo(self.output_root / "file_hashes.json")
        self.inputs = InputResolver(self.project_root, self.output_root, self.memo)

    # ---- public -------------------------------------------------------------------------------------
    def run(self, job, experiment_name: str) -> PipelineResult:
        started = time.perf_counter()
        tracking = self._start_parent_run(job, experiment_name)
        order = topological_order(job.jobs)
        print(f"Pipeline {job.display_name!r}: {len(order)} steps, MLflow run {tracking.parent_id}", flush=True)
        print(f"  tracking: {self.tracking_uri}", flush=True)
        results = self._run_steps(job, order, tracking)
        steps = [results[n] for n in order]
        outputs = self._pipeline_outputs(job, results)
        seconds = time.perf_counter() - started
        failed = next((s for s in steps if s.status == "failed"), None)
        self._end_parent_run(tracking, steps, outputs, seconds, failed=failed is not None)
        self.memo.save()
        if failed:
            raise LocalRunError(f"step {failed.name} failed; see its log: {failed.log}")
        return PipelineResult(tracking.parent_id, steps, outputs, seconds)

    # ---- the pipeline run ---------------------------------------------------------------------------
    def _start_parent_run(self, job, experiment_name: str) -> _Tracking:
        from mlflow.tracking import MlflowClient

        # A client bound to the store, not mlflow.set_tracking_uri: the caller's process-wide MLflow setting is theirs.
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(experiment_name, artifact_location=self.artifact_root.as_uri())
        )
        parent = client.create_run(experiment_id, run_name=job.display_name or job.name, tags={"backend": "local"})
        return _Tracking(client, experiment_id, parent.info.run_id)

    def _run_steps(self, job, order: list[str], tracking: _Tracking) -> dict[str, StepResult]:
        """Every step in order; after a failure the rest are skipped."""
        results: dict[str, StepResult] = {}
        failed: StepResult | None = None
        for index, name in enumerate(order, start=1):
            label = f"[{index}/{len(order)}] {name}"
            if failed:
                results[name] = StepResult(name, "skipped", 0.0)
                print(f"{label:<34} skipped (upstream {failed.name} failed)", flush=True)
                continue
            result = results[name] = self._run_step(job, name, results, tracking, label)
            print(f"{label:<34} {result.status} in {result.seconds:.1f} s", flush=True)
            if result.status == "failed":
                failed = result
        return results

    def _end_parent_run(
        self, tracking: _Tracking, steps: list[StepResult], outputs: dict[str, Path], seconds: float, failed: bool
    ) -> None:
        client, run_id = tracking.client, tracking.parent_id
        summary = {
            "seconds": round(seconds, 2),
            "steps": [
                {"name": s.name, "status": s.status, "seconds": round(s.seconds, 2), "cache_key": s.cache_key}
                for s in steps
            ],
            "outputs": {k: str(v) for k, v in outputs.items()},
        }
        client.log_dict(run_id, summary, "pipeline_summary.json")
        client.log_metric(run_id, "pipeline_seconds", seconds)
        client.log_metric(run_id, "steps_reused", sum(s.status == "reused" for s in steps))
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    @staticmethod
    def _pipeline_outputs(job, results: dict[str, StepResult]) -> dict[str, Path]:
        outputs: dict[str, Path] = {}
        for step_name, node in job.jobs.items():
            for port, node_output in node.outputs.items():
                target = sdk_private.pipeline_output_name(node_output)
                if target in job.outputs and step_name in results and port in results[step_name].outputs:
                    outputs[target] = results[step_name].outputs[port]
        return outputs

    # ---- one step -----------------------------------------------------------------------------------
    def _run_step(self, job, name: str, done: dict[str, StepResult], tracking: _Tracking, label: str) -> StepResult:
        node = job.jobs[name]
        component = node.component
        inputs, input_hashes = self.inputs.resolve(job, name, done)
        code, code_hash = snapshot(component, self.output_root, self.memo)
        key, key_material = step_key(node, code_hash, input_hashes)
        folder = StepFolder(self.output_root, component, key)
        deterministic = component.is_deterministic is not False
        if deterministic and not self.force_rerun and folder.completed():
            return StepResult(name, "reused", 0.0, folder.outputs, folder.log, cache_key=key)

        print(f"{label:<34} running ...", flush=True)
        folder.prepare()
        command = resolve_command(component.command, inputs, folder.outputs, path_inputs(component))
        record = {"step": name, "cache_key": key, "key_material": key_material}
        return self._execute_step(node, command, code, folder, record, tracking)

    def _execute_step(
        self, node, command: str, code: Path, folder: StepFolder, record: dict[str, Any], tracking: _Tracking
    ) -> StepResult:
        """Run the command as an MLflow child run; on success, mark the step folder completed."""
        name, key, client = record["step"], record["cache_key"], tracking.client
        run = client.create_run(
            tracking.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": tracking.parent_id, "component": node.component.name, "cache_key": key},
        )
        run_id = run.info.run_id
        env = step_env(self.output_root, self.tracking_uri, run_id, tracking.experiment_id, self.offline)
        started = time.perf_counter()
        returncode = launch(node, command, code, env, folder.log, stream=self.stream_logs)
        seconds = time.perf_counter() - started
        if returncode != 0:
            client.set_terminated(run_id, "FAILED")
            if not self.stream_logs:
                tail = folder.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
                print("\n".join(f"    | {line}" for line in tail), flush=True)
            return StepResult(name, "failed", seconds, folder.outputs, folder.log, run_id, key)
        # MLflow may have been ended by the script already; set the final state either way.
        client.set_terminated(run_id, "FINISHED")
        record.update({"run_id": run_id, "seconds": round(seconds, 2), "command": command})
        folder.mark_completed(record, self.memo)  # written last: marks completion
        return StepResult(name, "completed", seconds, folder.outputs, folder.log, run_id, key)
