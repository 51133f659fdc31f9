"""The processes of a ``distribution: pytorch`` step, as Azure ML starts them.

Azure ML starts process_count_per_instance × instance_count copies of the command and sets the torch.distributed
environment for each; locally every "node" is this machine, so the ranks of all nodes run here side by side and
rendezvous on a free loopback port. On CPU, torch.distributed uses gloo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from chatft.processes import free_port
from pipelines.local.results import LocalRunError

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
        port = free_port()
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
