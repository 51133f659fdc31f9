"""The environment a step's command runs with: the venv's python, MLflow's run, every cache under the output root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Fast, lots-of-small-allocations friendly malloc settings measured on this kind of VM (PLATFORM_NOTES).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def step_env(output_root: Path, tracking_uri: str, run_id: str, experiment_id: str, offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    # Components import shared code from their snapshot (additional_includes), never from the repo.
    env.pop("PYTHONPATH", None)
    for folder in ("home", "tmp", "hf-home", "cache"):
        (output_root / folder).mkdir(exist_ok=True)
    env.update(
        {
            # The venv's python first: component commands say `python script.py`, as on Azure ML.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MLFLOW_TRACKING_URI": tracking_uri,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_EXPERIMENT_ID": str(experiment_id),
            "CHATFT_HOME": str(output_root),
            # Keep every cache a library writes (HF, matplotlib, gunicorn's ~/.gunicorn) inside the output root.
            "HOME": str(output_root / "home"),
            "TMPDIR": str(output_root / "tmp"),
            "HF_HOME": str(output_root / "hf-home"),
            "XDG_CACHE_HOME": str(output_root / "cache"),
            "MPLCONFIGDIR": str(output_root / "cache" / "matplotlib"),
            "GLIBC_TUNABLES": env.get("GLIBC_TUNABLES", MALLOC_TUNABLES),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if offline:
        env.update(_OFFLINE)
    return env
