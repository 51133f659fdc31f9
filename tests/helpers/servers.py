"""Servers the tests start: score.py staged like a deployment's code folder and served on loopback; cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from chatft.serving.launch import running_server, stage_code

REPO = Path(__file__).resolve().parents[2]
DEPLOY_COMPONENT = REPO / "components" / "deploy_endpoint"


def staged_server(model_dir: Path, code_dir: Path, home: Path, timeout_s: float = 120):
    """score.py, serving.json, the launcher and chatft staged in ``code_dir`` (as deploy_endpoint stages a slot), served
    on a free loopback port until the block ends; the server log goes beside ``code_dir``."""
    stage_code(DEPLOY_COMPONENT, code_dir, with_launcher=True)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # chatft from the staged copy
    env["HOME"] = str(home)  # gunicorn makes ~/.gunicorn
    return running_server(model_dir, code_dir.parent / "server.log", code_dir=code_dir, env=env, timeout_s=timeout_s)


def component_server(model_dir: Path, home: Path, env: dict[str, str] | None = None):
    """score.py served straight from components/deploy_endpoint, chatft through PYTHONPATH (src/)."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO / "src"), "HOME": str(home)}
    return running_server(model_dir, home / "server.log", code_dir=DEPLOY_COMPONENT, env=env)


def kill_group(pid: int) -> None:
    """SIGKILL a server's whole process group, if it is still there."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
