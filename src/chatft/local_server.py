"""The local endpoint's server process: is it alive, is it ours, and stopping it.

Shared by the deploy_endpoint component (which starts and replaces servers) and ``pipelines.endpoint``
(``make stop`` / ``make status``), so both judge a recorded PID the same way.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

LAUNCHER = "serve_local.py"  # the process deploy_endpoint records; a PID running anything else is not ours
STOP_TIMEOUT_S = 15


def pid_running(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc (macOS): trust os.kill


def is_our_server(pid: int) -> bool:
    """The recorded PID is still our launcher, not an unrelated process that reused the number."""
    if not pid_running(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return LAUNCHER.encode() in cmdline.read_bytes() if cmdline.is_file() else True


def stop_server(pid: int) -> bool:
    """Stop the server's whole process group (gunicorn master and worker); escalate to SIGKILL if it hangs.

    Returns False, touching nothing, when ``pid`` is not our server.
    """
    if not is_our_server(pid):
        return False
    group = os.getpgid(pid) == pid  # started as a session leader, so the group is exactly the server
    kill = (lambda sig: os.killpg(pid, sig)) if group else (lambda sig: os.kill(pid, sig))
    kill(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while pid_running(pid):
        if time.monotonic() > deadline:
            kill(signal.SIGKILL)
            break
        time.sleep(0.1)
    return True
