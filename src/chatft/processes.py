"""Child processes the project runs as servers: a free loopback port, a detached start, the wait for health.

Used by the local deployment (slots and router), the local server launcher, the tests and the benchmarks, so that a
server is started and awaited one way everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from chatft.errors import ChatftError

LOOPBACK = "127.0.0.1"


class ServerStartError(ChatftError):
    """A server exited or stayed unhealthy while starting; the message quotes the end of its log."""


def free_port() -> int:
    """A loopback port the kernel has just handed out. The server binds it a moment later; a race lost there shows
    as a failed start, not as a silent clash."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether a server could not bind ``port`` now. As gunicorn binds: a just-stopped server's connections in
    TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def accepting(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on the loopback ``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((LOOPBACK, port)) == 0


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET ``url`` answers 200 (refused, timed out or any other status: no)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def spawn_detached(command: list[str], cwd: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``command`` in its own session, stdout and stderr appended to ``log_path`` under a header line.

    Its own session: it outlives the caller, ignores signals sent to the caller's process group, and
    ``stop_process_group`` reaches all of it (a gunicorn master and its workers)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last ``lines`` of a log, indented for quoting in an error message."""
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except FileNotFoundError:
        return f"    | ({log_path} was not written)"
    return "\n".join(f"    | {line}" for line in text[-lines:])


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen, what: str, log_path: Path, timeout_s: float
) -> float:
    """Poll ``ready()`` until it is true; return the seconds it took.

    Raises ``ServerStartError`` (quoting the log's tail) if ``process`` exits first or ``timeout_s`` passes."""
    started = time.monotonic()
    while not ready():
        if process.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {process.returncode} before it was ready; see {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if time.monotonic() - started > timeout_s:
            raise ServerStartError(
                f"{what} was not ready after {timeout_s:.0f} s; see {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.1)
    return time.monotonic() - started


def stop_process_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the process's group, SIGKILL it after ``grace_s``; wait for the process either way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
