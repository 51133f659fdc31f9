"""The local backend runs a `distribution: pytorch` step as Azure ML does: one process per rank, torch.distributed
environment set, a log per rank, and the step failing (its other ranks stopped) when any rank fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines.local_backend import LocalBackend, LocalRunError, rank_env
from tests.helpers.local_projects import component_yml, write_project

COMPONENT_YML = component_yml(
    "ranks",
    """
    inputs:
      mode: {type: string, default: allreduce}
    outputs:
      report: {type: uri_folder}
    distribution:
      type: pytorch
      process_count_per_instance: 2
    resources:
      instance_count: 2
    command: python ranks.py ${{inputs.mode}} ${{outputs.report}}
    """,
)
# allreduce: join the process group over gloo (as a CPU Trainer does), sum the ranks, write what each rank saw.
# fail: rank 1 exits 3 once the others are up; they wait (as ranks blocked in a collective would) until stopped.
RANKS_PY = """
import json, os, pathlib, sys, time
mode, report = sys.argv[1], pathlib.Path(sys.argv[2])
names = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "OMP_NUM_THREADS")
seen = {name: os.environ.get(name) for name in names}
print(f"rank {seen['RANK']} of {seen['WORLD_SIZE']} says hello", flush=True)
if mode == "fail":
    if seen["RANK"] == "1":
        while len(list(report.glob("waiting_*"))) < 3:  # fail once the others are surely running
            time.sleep(0.05)
        sys.exit(3)
    (report / f"waiting_{seen['RANK']}").write_text(str(os.getpid()))
    time.sleep(600)
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank())])
dist.all_reduce(total)
seen["sum_of_ranks"] = total.item()
seen["backend"] = dist.get_backend()
dist.destroy_process_group()
(report / f"rank_{seen['RANK']}.json").write_text(json.dumps(seen))
"""


def build_job(root: Path, mode: str):
    from azure.ai.ml import dsl, load_component

    ranks = load_component(source=root / "components/ranks/component.yml")

    @dsl.pipeline(name="distributed", default_compute="cpu")
    def distributed():
        return {"report": ranks(mode=mode).outputs.report}

    return distributed()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    files = {"components/ranks/component.yml": COMPONENT_YML, "components/ranks/ranks.py": RANKS_PY}
    return write_project(tmp_path / "project", files)


def backend(root: Path, tmp_path: Path) -> LocalBackend:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return LocalBackend(root / "outputs", root, stream_logs=False, tracking_uri=uri)


def test_rank_env_is_what_azure_ml_sets_for_two_nodes_of_two():
    seen = [rank_env({"PATH": "/bin"}, rank, nodes=2, per_node=2, port=29511) for rank in range(4)]
    assert [(e["RANK"], e["LOCAL_RANK"], e["NODE_RANK"]) for e in seen] == [
        ("0", "0", "0"),
        ("1", "1", "0"),
        ("2", "0", "1"),
        ("3", "1", "1"),
    ]
    assert {(e["WORLD_SIZE"], e["MASTER_ADDR"], e["MASTER_PORT"], e["PATH"]) for e in seen} == {
        ("4", "127.0.0.1", "29511", "/bin")
    }


@pytest.mark.slow
def test_a_pytorch_step_runs_every_rank_and_they_rendezvous_over_gloo(project, tmp_path):
    result = backend(project, tmp_path).run(build_job(project, "allreduce"), "distributed")
    report = result.outputs["report"]
    seen = [json.loads((report / f"rank_{rank}.json").read_text()) for rank in range(4)]
    assert [(s["RANK"], s["LOCAL_RANK"], s["NODE_RANK"]) for s in seen] == [
        ("0", "0", "0"),
        ("1", "1", "0"),
        ("2", "0", "1"),
        ("3", "1", "1"),
    ]
    assert {s["WORLD_SIZE"] for s in seen} == {"4"} and {s["MASTER_ADDR"] for s in seen} == {"127.0.0.1"}
    assert len({s["MASTER_PORT"] for s in seen}) == 1 and int(seen[0]["MASTER_PORT"]) > 0
    assert {s["sum_of_ranks"] for s in seen} == {0.0 + 1 + 2 + 3} and {s["backend"] for s in seen} == {"gloo"}
    logs = report.parent / "user_logs"
    for rank in range(4):  # one log per rank, as Azure ML's user_logs/std_log_process_<rank>.txt
        assert f"rank {rank} of 4 says hello" in (logs / f"std_log_process_{rank}.txt").read_text()
    step_log = (report.parent / "step.log").read_text()
    assert "rank 0 of 4 says hello" in step_log and "rank 1 of 4" not in step_log  # rank 0's output
    assert all(f"# rank {rank}: exit 0" in step_log for rank in range(4))


def test_one_failing_rank_fails_the_step_and_the_other_ranks_are_stopped(project, tmp_path):
    import os

    started = time.monotonic()
    with pytest.raises(LocalRunError, match="step ranks failed"):
        backend(project, tmp_path).run(build_job(project, "fail"), "distributed")
    assert time.monotonic() - started < 60  # not the 600 s the other ranks would wait
    step_dir = next((project / "outputs" / "steps").glob("ranks-*"))
    step_log = (step_dir / "step.log").read_text()
    assert "# rank 1: exit 3" in step_log
    assert "# rank 0: exit" in step_log and "(stopped: another rank failed)" in step_log
    assert "rank 1 of 4 says hello" in step_log  # the failing rank's tail is in the step log
    markers = sorted((step_dir / "report").glob("waiting_*"))
    assert [m.name for m in markers] == ["waiting_0", "waiting_2", "waiting_3"]
    for marker in markers:
        pid = int(marker.read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no rank is left running
    assert not (step_dir / "step.json").exists()  # not marked complete: a re-run runs it again
