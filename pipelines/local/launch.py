"""How a step's command runs: with bash in its snapshot folder (as Azure ML does), its output in step.log and, when
streaming, on the console; one process, or every rank of a ``distribution: pytorch`` step."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pipelines.local.ranks import RankGroup, distributed_layout, rank_log_dir


def launch(node, command: str, cwd: Path, env: dict[str, str], log_path: Path, stream: bool = True) -> int:
    """One process, or Azure ML's ``distribution: pytorch`` layout when the node declares more than one."""
    nodes, per_node = distributed_layout(node)
    if nodes * per_node == 1:  # Azure ML would set RANK=0, WORLD_SIZE=1: nothing reads them for one process
        return execute(command, cwd, env, log_path, stream)
    return run_ranks(command, cwd, env, log_path, nodes, per_node, stream=stream)


def execute(command: str, cwd: Path, env: dict[str, str], log_path: Path, stream: bool = True) -> int:
    """Run with bash; tee raw output to the log and, if streaming, the console."""
    with (
        log_path.open("wb") as log,
        subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as process,
    ):
        log.write(f"$ {command}\n".encode())
        write = _tee(log, stream)
        for chunk in iter(lambda: os.read(process.stdout.fileno(), 65536), b""):
            write(chunk)
        returncode = process.wait()
    return returncode


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
        group.start()
        # rank 0's log starts with the command line already written above: skip it
        returncode = group.wait(on_output=_skip_first_line(_tee(log, stream)))
        _report_ranks(group, log, stream)
    return returncode


def _report_ranks(group: RankGroup, log: BinaryIO, stream: bool) -> None:
    """One line per rank with its exit status; the failing rank's tail when it is not rank 0 (already in the log)."""
    for rank, (process, rank_log) in enumerate(zip(group.processes, group.logs, strict=True)):
        why = " (stopped: another rank failed)" if group.failed_rank not in (None, rank) else ""
        line = f"# rank {rank}: exit {process.returncode}{why}; log {rank_log}\n"
        log.write(line.encode())
        if stream or (group.failed_rank is not None):
            sys.stdout.write(line)
    if group.failed_rank is not None and group.failed_rank != 0:
        tail = group.logs[group.failed_rank].read_bytes().splitlines()[-15:]
        log.write(b"".join(b"# rank %d | %s\n" % (group.failed_rank, row) for row in tail))


def _tee(log: BinaryIO, stream: bool) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        log.write(chunk)
        if stream:
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    return write


def _skip_first_line(write: Callable[[bytes], None]) -> Callable[[bytes], None]:
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
