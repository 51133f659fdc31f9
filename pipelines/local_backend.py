"""Run an azure-ai-ml ``PipelineJob`` on this machine, the way Azure ML would.

For each node, in dependency order:
  1. snapshot the component's ``code`` folder plus its ``additional_includes`` (as Azure ML uploads them);
  2. resolve ``${{inputs.*}}`` / ``${{outputs.*}}`` and the optional ``$[[...]]`` blocks to local values;
  3. reuse the outputs of an earlier run when the step is deterministic and its code, environment,
     command, input contents and parameters are all unchanged (Azure ML's reuse rule), else
  4. run the command with bash in the snapshot folder, as one MLflow child run of the pipeline run.

Everything is written under ``output_root``; inputs must live in the project or under ``output_root``.
Outputs of an interrupted attempt are kept, so a re-run continues from its checkpoints (like a
pre-empted Azure node whose mounted outputs survive).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatft.errors import ChatftError
from pipelines import sdk_private

_INPUT_REF = re.compile(r"\$\{\{\s*inputs\.(\w+)\s*\}\}")
_OUTPUT_REF = re.compile(r"\$\{\{\s*outputs\.(\w+)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
# Fast, lots-of-small-allocations friendly malloc settings measured on this kind of VM (PLATFORM_NOTES).
_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
_PATH_TYPES = ("uri_folder", "uri_file", "custom_model", "mlflow_model")
_CACHE_FORMAT = 1  # bump to invalidate every cached step when the key recipe changes


class LocalRunError(ChatftError, RuntimeError):
    """A step failed or a pipeline cannot run locally; the message names the step and the log."""


@dataclass
class StepResult:
    name: str
    status: str  # "completed" | "reused" | "failed" | "skipped"
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)
    log: Path | None = None
    run_id: str | None = None
    cache_key: str = ""


@dataclass
class PipelineResult:
    run_id: str
    steps: list[StepResult]
    outputs: dict[str, Path]
    seconds: float

    @property
    def succeeded(self) -> bool:
        return all(s.status in ("completed", "reused") for s in self.steps)


class FileHashMemo:
    """sha256 per file, remembered by (path, size, mtime, inode) so unchanged big files are read once."""

    def __init__(self, store: Path | None = None):
        self.store = store
        self.entries: dict[str, list] = {}
        if store and store.is_file():
            try:
                self.entries = json.loads(store.read_text(encoding="utf-8"))
            except ValueError:  # a torn write: start afresh, it is only a memo
                self.entries = {}

    def file_digest(self, file: Path) -> str:
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        key = str(file.resolve())
        cached = self.entries.get(key)
        if cached and cached[:3] == stamp:
            return cached[3]
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        self.entries[key] = [*stamp, digest.hexdigest()]
        return digest.hexdigest()

    def save(self) -> None:
        if self.store:
            tmp = self.store.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries), encoding="utf-8")
            tmp.replace(self.store)


def hash_path(path: Path, memo: FileHashMemo | None = None) -> str:
    """Content hash of a file or folder (relative names + bytes), independent of timestamps."""
    memo = memo or FileHashMemo()
    if path.is_file():
        files, base = [path], path.parent
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        base = path
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(base)}\0{memo.file_digest(file)}\0".encode())
    return digest.hexdigest()


def _within(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


def _topological_order(jobs: dict[str, Any]) -> list[str]:
    deps = {name: {_upstream(v) for v in node.inputs.values()} - {None} for name, node in jobs.items()}
    order: list[str] = []
    while deps:
        ready = [name for name, needs in deps.items() if needs <= set(order)]
        if not ready:
            raise LocalRunError(f"pipeline has a dependency cycle among: {', '.join(deps)}")
        for name in ready:  # keep the pipeline's own order among ready steps
            order.append(name)
            del deps[name]
    return order


def _upstream(node_input) -> str | None:
    binding = sdk_private.input_binding(node_input)
    return sdk_private.upstream_step(binding) if sdk_private.binding_kind(binding) == "output" else None


def _render(value: Any) -> str:
    # Azure ML renders booleans as True/False; keep the same so scripts parse one form.
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def resolve_command(
    command: str, inputs: dict[str, Any], outputs: dict[str, Path], path_inputs: frozenset[str] = frozenset()
) -> str:
    """Substitute inputs/outputs into a component command; drop ``$[[...]]`` blocks whose inputs are unset.

    Literal values are substituted raw, exactly as Azure ML does, so a spec that needs quoting (a value
    with spaces or glob characters) must quote it itself and behaves the same on both backends. Local
    paths are quoted: Azure's mount paths have no spaces, but a user's project folder may.
    """

    def optional_block(match: re.Match) -> str:
        names = _INPUT_REF.findall(match.group(1))
        return match.group(1) if all(inputs.get(n) is not None for n in names) else ""

    command = _OPTIONAL_BLOCK.sub(optional_block, command)

    def input_value(match: re.Match) -> str:
        name = match.group(1)
        if inputs.get(name) is None:
            raise LocalRunError(f"command uses inputs.{name}, which has no value and no default")
        text = _render(inputs[name])
        return shlex.quote(text) if name in path_inputs else text

    command = _INPUT_REF.sub(input_value, command)
    return _OUTPUT_REF.sub(lambda m: shlex.quote(str(outputs[m.group(1)])), command)


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

    # ---- public -------------------------------------------------------------------------------------
    def run(self, job, experiment_name: str) -> PipelineResult:
        from mlflow.tracking import MlflowClient

        started = time.perf_counter()
        # A client bound to the store, not mlflow.set_tracking_uri: the caller's process-wide MLflow setting is theirs.
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(experiment_name, artifact_location=self.artifact_root.as_uri())
        )
        parent = client.create_run(experiment_id, run_name=job.display_name or job.name, tags={"backend": "local"})
        run_id = parent.info.run_id
        order = _topological_order(job.jobs)
        print(f"Pipeline {job.display_name!r}: {len(order)} steps, MLflow run {run_id}", flush=True)
        print(f"  tracking: {self.tracking_uri}", flush=True)

        results: dict[str, StepResult] = {}
        failed: StepResult | None = None
        for index, name in enumerate(order, start=1):
            label = f"[{index}/{len(order)}] {name}"
            if failed:
                results[name] = StepResult(name, "skipped", 0.0)
                print(f"{label:<34} skipped (upstream {failed.name} failed)", flush=True)
                continue
            result = self._run_step(job, name, results, client, experiment_id, run_id, label)
            results[name] = result
            how = "reused" if result.status == "reused" else result.status
            print(f"{label:<34} {how} in {result.seconds:.1f} s", flush=True)
            if result.status == "failed":
                failed = result

        steps = [results[n] for n in order]
        outputs = self._pipeline_outputs(job, results)
        seconds = time.perf_counter() - started
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
        self.memo.save()
        result = PipelineResult(run_id, steps, outputs, seconds)
        if failed:
            raise LocalRunError(f"step {failed.name} failed; see its log: {failed.log}")
        return result

    # ---- one step -----------------------------------------------------------------------------------
    def _run_step(
        self, job, name: str, done: dict[str, StepResult], client, experiment_id, parent_id, label: str
    ) -> StepResult:
        node = job.jobs[name]
        component = node.component
        inputs, input_hashes = self._resolve_inputs(job, name, done)
        snapshot, code_hash = self._snapshot(component)
        key_material = {
            "format": _CACHE_FORMAT,
            "component": f"{component.name}:{component.version}",
            "code": code_hash,
            "environment": str(component.environment),
            "command": component.command,
            "inputs": input_hashes,
        }
        if distributed_layout(node) != (1, 1):  # nodes x processes change the global batch, so the result
            key_material["processes"] = list(distributed_layout(node))
        key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()
        step_dir = self.output_root / "steps" / f"{component.name}-{key[:16]}"
        outputs = {port: step_dir / port for port in component.outputs}
        marker = step_dir / "step.json"
        deterministic = component.is_deterministic is not False
        if deterministic and not self.force_rerun and marker.is_file():
            return StepResult(name, "reused", 0.0, outputs, step_dir / "step.log", cache_key=key)

        print(f"{label:<34} running ...", flush=True)
        for path in outputs.values():
            path.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        path_inputs = frozenset(k for k, spec in component.inputs.items() if spec.type in _PATH_TYPES)
        command = resolve_command(component.command, inputs, outputs, path_inputs)
        run = client.create_run(
            experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": parent_id, "component": component.name, "cache_key": key},
        )
        log_path = step_dir / "step.log"
        started = time.perf_counter()
        returncode = self._launch(node, command, snapshot, self._step_env(run.info.run_id, experiment_id), log_path)
        seconds = time.perf_counter() - started
        if returncode != 0:
            client.set_terminated(run.info.run_id, "FAILED")
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
            if not self.stream_logs:
                print("\n".join(f"    | {line}" for line in tail), flush=True)
            return StepResult(name, "failed", seconds, outputs, log_path, run.info.run_id, key)
        # MLflow may have been ended by the script already; set the final state either way.
        client.set_terminated(run.info.run_id, "FINISHED")
        record = {
            "step": name,
            "cache_key": key,
            "key_material": key_material,
            "run_id": run.info.run_id,
            "seconds": round(seconds, 2),
            "command": command,
            "outputs": {port: hash_path(path, self.memo) for port, path in outputs.items()},
        }
        marker.write_text(json.dumps(record, indent=2), encoding="utf-8")  # written last: marks completion
        return StepResult(name, "completed", seconds, outputs, log_path, run.info.run_id, key)

    def _resolve_inputs(self, job, name: str, done: dict[str, StepResult]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Values to substitute, and what identifies each one for the cache (content hashes, literals)."""
        from azure.ai.ml import Input

        node = job.jobs[name]
        component = node.component
        values: dict[str, Any] = {}
        identity: dict[str, Any] = {}
        for input_name, spec in component.inputs.items():
            data = sdk_private.input_binding(node.inputs[input_name]) if input_name in node.inputs else None
            if sdk_private.binding_kind(data) == "output":  # an upstream step's output
                upstream = done[sdk_private.upstream_step(data)]
                path = upstream.outputs[sdk_private.port_name(data)]
                values[input_name] = str(path)
                identity[input_name] = self._output_hash(upstream, sdk_private.port_name(data))
                continue
            if sdk_private.binding_kind(data) == "pipeline":  # bound to a pipeline-level input
                port = sdk_private.port_name(data)
                data = sdk_private.input_binding(job.inputs[port]) if port in job.inputs else None
            if isinstance(data, Input):
                data = data.path
                if data is not None:
                    path = self._local_path(name, input_name, str(data))
                    values[input_name] = str(path)
                    identity[input_name] = hash_path(path, self.memo)
                    continue
            if data is None:
                data = spec.default
            if data is None and spec.type in _PATH_TYPES:
                if not spec.optional:
                    raise LocalRunError(f"step {name}: required input {input_name} has no value")
            elif data is not None:
                data = self._check_literal(name, input_name, spec, data)
            values[input_name] = data
            identity[input_name] = data
        return values, identity

    def _check_literal(self, step: str, input_name: str, spec, value):
        """Apply the spec's type, enum and min/max the way Azure ML validates literals at submit time."""
        kind = spec.type
        try:
            if kind == "integer":
                value = int(value)
            elif kind == "number":
                value = float(value)
            elif kind == "boolean":
                if isinstance(value, str):
                    if value.lower() not in ("true", "false"):
                        raise ValueError(value)
                    value = value.lower() == "true"
                value = bool(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise LocalRunError(f"step {step}: input {input_name}={value!r} is not a valid {kind}") from None
        low, high = getattr(spec, "min", None), getattr(spec, "max", None)
        if low is not None and value < float(low) or high is not None and value > float(high):
            raise LocalRunError(f"step {step}: input {input_name}={value} is outside [{low}, {high}]")
        allowed = getattr(spec, "enum", None)
        if allowed and value not in allowed:
            raise LocalRunError(f"step {step}: input {input_name}={value!r} must be one of {', '.join(allowed)}")
        return value

    def _local_path(self, step: str, input_name: str, value: str) -> Path:
        if value.startswith("azureml:") or "://" in value:
            raise LocalRunError(
                f"step {step}: input {input_name} points at an Azure asset ({value}); "
                "the local backend needs a local path (see pipelines/config/local.yaml)"
            )
        path = Path(value)
        path = path if path.is_absolute() else self.project_root / path
        if not path.exists():
            raise LocalRunError(f"step {step}: input {input_name}: {path} does not exist")
        if not _within(path, [self.project_root, self.output_root]):
            raise LocalRunError(
                f"step {step}: input {input_name}: {path} is outside the project and the output root; "
                "copy it under data/ or point --output-root at a folder that contains it"
            )
        return path

    def _output_hash(self, step: StepResult, port: str) -> str:
        marker = step.outputs[port].parent / "step.json"
        if step.status in ("completed", "reused") and marker.is_file():
            return json.loads(marker.read_text(encoding="utf-8"))["outputs"][port]
        return hash_path(step.outputs[port], self.memo)

    def _snapshot(self, component) -> tuple[Path, str]:
        """Copy code + additional_includes into a content-addressed folder; return it and its hash."""
        base = Path(component.base_path)
        code = (base / (component.code or ".")).resolve()
        sources = [(code, None)]
        for include in component.additional_includes or []:
            include_path = (base / include).resolve()
            if not include_path.exists():
                raise LocalRunError(f"component {component.name}: additional include {include} not found")
            sources.append((include_path, include_path.name))
        digest = hashlib.sha256()
        for source, target in sources:
            digest.update(f"{target}:{hash_path(source, self.memo)}".encode())
        code_hash = digest.hexdigest()
        snapshot = self.output_root / "snapshots" / f"{component.name}-{code_hash[:16]}"
        if not snapshot.is_dir():
            staging = snapshot.with_name(snapshot.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            for source, target in sources:
                destination = staging / target if target else staging
                if source.is_dir():
                    shutil.copytree(source, destination, ignore=ignore, dirs_exist_ok=True)
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, destination)
            staging.rename(snapshot)
        return snapshot, code_hash

    def _step_env(self, run_id: str, experiment_id: str) -> dict[str, str]:
        env = dict(os.environ)
        # Components import shared code from their snapshot (additional_includes), never from the repo.
        env.pop("PYTHONPATH", None)
        home = self.output_root / "home"
        for folder in ("home", "tmp", "hf-home", "cache"):
            (self.output_root / folder).mkdir(exist_ok=True)
        env.update(
            {
                # The venv's python first: component commands say `python script.py`, as on Azure ML.
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "MLFLOW_TRACKING_URI": self.tracking_uri,
                "MLFLOW_RUN_ID": run_id,
                "MLFLOW_EXPERIMENT_ID": str(experiment_id),
                "CHATFT_HOME": str(self.output_root),
                # Keep every cache a library writes (HF, matplotlib, gunicorn's ~/.gunicorn) inside the output root.
                "HOME": str(home),
                "TMPDIR": str(self.output_root / "tmp"),
                "HF_HOME": str(self.output_root / "hf-home"),
                "XDG_CACHE_HOME": str(self.output_root / "cache"),
                "MPLCONFIGDIR": str(self.output_root / "cache" / "matplotlib"),
                "GLIBC_TUNABLES": env.get("GLIBC_TUNABLES", _MALLOC_TUNABLES),
                "TOKENIZERS_PARALLELISM": "false",
            }
        )
        if self.offline:
            env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        return env

    def _execute(self, command: str, cwd: Path, env: dict[str, str], log_path: Path) -> int:
        """Run with bash (as Azure ML does); tee raw output to the log and, if streaming, the console."""
        with (
            log_path.open("wb") as log,
            subprocess.Popen(
                ["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            ) as process,
        ):
            log.write(f"$ {command}\n".encode())
            for chunk in iter(lambda: os.read(process.stdout.fileno(), 65536), b""):
                log.write(chunk)
                if self.stream_logs:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            returncode = process.wait()
        return returncode

    def _launch(self, node, command: str, cwd: Path, env: dict[str, str], log_path: Path) -> int:
        """One process, or Azure ML's ``distribution: pytorch`` layout when the node declares more than one."""
        nodes, per_node = distributed_layout(node)
        if nodes * per_node == 1:  # Azure ML would set RANK=0, WORLD_SIZE=1: nothing reads them for one process
            return self._execute(command, cwd, env, log_path)
        return run_ranks(command, cwd, env, log_path, nodes, per_node, stream=self.stream_logs)

    @staticmethod
    def _pipeline_outputs(job, results: dict[str, StepResult]) -> dict[str, Path]:
        outputs: dict[str, Path] = {}
        for step_name, node in job.jobs.items():
            for port, node_output in node.outputs.items():
                target = sdk_private.pipeline_output_name(node_output)
                if target in job.outputs and step_name in results and port in results[step_name].outputs:
                    outputs[target] = results[step_name].outputs[port]
        return outputs


# ---- distribution: pytorch ----------------------------------------------------------------------------------------
# Azure ML starts process_count_per_instance × instance_count copies of a `distribution: pytorch` command and sets
# the torch.distributed environment for each; locally every "node" is this machine, so the ranks of all nodes run
# here side by side and rendezvous on a free loopback port. On CPU, torch.distributed uses gloo.
_RANK_POLL_SECONDS = 0.1
_RANK_GRACE_SECONDS = 10  # after SIGTERM, how long a rank may take to exit before SIGKILL


def distributed_layout(node) -> tuple[int, int]:
    """(instance_count, process_count_per_instance) of a pipeline node; (1, 1) without a pytorch distribution."""
    distribution = getattr(node, "distribution", None)
    if getattr(distribution, "type", None) != "pytorch":
        return 1, 1
    resources = getattr(node, "resources", None)
    nodes = int(getattr(resources, "instance_count", None) or 1)
    per_node = int(getattr(distribution, "process_count_per_instance", None) or 1)
    if nodes < 1 or per_node < 1:
        raise LocalRunError(
            f"node {node.name}: instance_count={nodes} and process_count_per_instance={per_node} must be >= 1"
        )
    return nodes, per_node


def free_loopback_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_env(env: dict[str, str], rank: int, nodes: int, per_node: int, port: int) -> dict[str, str]:
    """The variables Azure ML sets for one process of a pytorch distribution (here every node is 127.0.0.1)."""
    world = nodes * per_node
    threads = max(1, (os.cpu_count() or 1) // world)  # as torchrun: ranks must not oversubscribe the cores
    return {
        **env,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(world),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank % per_node),
        "LOCAL_WORLD_SIZE": str(per_node),
        "NODE_RANK": str(rank // per_node),
        "GROUP_RANK": str(rank // per_node),
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(threads)),
    }


def rank_log_dir(log_path: Path) -> Path:
    """Where each rank's output goes, named as Azure ML names them (user_logs/std_log_process_<rank>.txt)."""
    return log_path.parent / "user_logs"


class RankGroup:
    """The processes of one distributed step. ``start()`` launches every rank, ``wait()`` returns the step's exit
    status: 0 when every rank exited 0, else the first failing rank's status, after stopping the others (a rank
    left waiting in a collective for a peer that died would otherwise hang until gloo's timeout)."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], log_path: Path, nodes: int, per_node: int):
        self.command, self.cwd, self.env, self.log_path = command, cwd, env, log_path
        self.nodes, self.per_node = nodes, per_node
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.failed_rank: int | None = None

    def start(self) -> RankGroup:
        port = free_loopback_port()
        folder = rank_log_dir(self.log_path)
        folder.mkdir(parents=True, exist_ok=True)
        for rank in range(self.nodes * self.per_node):
            log = folder / f"std_log_process_{rank}.txt"
            with log.open("wb") as handle:  # the child keeps its own descriptor
                handle.write(f"$ {self.command}\n".encode())
                handle.flush()
                process = subprocess.Popen(
                    ["bash", "-c", self.command],
                    cwd=self.cwd,
                    env=rank_env(self.env, rank, self.nodes, self.per_node, port),
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopping a rank stops what it started
                )
            self.processes.append(process)
            self.logs.append(log)
        return self

    def wait(self, on_output=None) -> int:
        """Poll the ranks; ``on_output(bytes)`` gets rank 0's new output as it comes."""
        offset = 0
        try:
            while True:
                if on_output:
                    offset = self._follow(self.logs[0], offset, on_output)
                codes = [p.poll() for p in self.processes]
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    self.failed_rank = failed[0]
                    self.stop()
                    return codes[failed[0]]
                if all(code == 0 for code in codes):
                    return 0
                time.sleep(_RANK_POLL_SECONDS)
        except BaseException:
            self.stop()  # interrupted (Ctrl-C): leave no rank behind
            raise
        finally:
            if on_output:
                self._follow(self.logs[0], offset, on_output)

    def stop(self, sig: int | None = None) -> None:
        """SIGTERM every rank still running (or ``sig``: SIGKILL for a simulated pre-emption), SIGKILL stragglers."""
        import signal

        sig = sig or signal.SIGTERM
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + _RANK_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @staticmethod
    def _follow(path: Path, offset: int, on_output) -> int:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
        if chunk:
            on_output(chunk)
        return offset + len(chunk)


def run_ranks(
    command: str, cwd: Path, env: dict[str, str], log_path: Path, nodes: int, per_node: int, stream: bool = True
) -> int:
    """Run a pytorch-distributed step: every rank's output in user_logs/, rank 0's also in ``log_path`` (and on the
    console when streaming), then one line per rank with its exit status. Returns the step's exit status."""
    group = RankGroup(command, cwd, env, log_path, nodes, per_node)
    with log_path.open("wb") as log:
        world = nodes * per_node
        log.write(
            f"$ {command}\n# {world} processes ({nodes} node(s) × {per_node}); rank 0's output follows, "
            f"every rank's in {rank_log_dir(log_path).name}/\n".encode()
        )

        def tee(chunk: bytes) -> None:
            log.write(chunk)
            if stream:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()

        group.start()
        # rank 0's log starts with the command line already written above: skip it
        returncode = group.wait(on_output=_skip_first_line(tee))
        for rank, (process, rank_log) in enumerate(zip(group.processes, group.logs, strict=True)):
            why = " (stopped: another rank failed)" if group.failed_rank not in (None, rank) else ""
            line = f"# rank {rank}: exit {process.returncode}{why}; log {rank_log}\n"
            log.write(line.encode())
            if stream or (group.failed_rank is not None):
                sys.stdout.write(line)
        if group.failed_rank is not None and group.failed_rank != 0:
            tail = group.logs[group.failed_rank].read_bytes().splitlines()[-15:]
            log.write(b"".join(b"# rank %d | %s\n" % (group.failed_rank, row) for row in tail))
    return returncode


def _skip_first_line(write):
    state = {"skipping": True}

    def wrapped(chunk: bytes) -> None:
        if state["skipping"]:
            newline = chunk.find(b"\n")
            if newline < 0:
                return
            chunk, state["skipping"] = chunk[newline + 1 :], False
        if chunk:
            write(chunk)

    return wrapped
