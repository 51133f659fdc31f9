"""No retired VM size is used anywhere: NCv3 (Standard_NC6s_v3, NC12s_v3, NC24s_v3) was retired on 2025-09-30, and a
deployment on it fails. A line may name one only to say it is retired (the README and infra/pricing.json do)."""

from __future__ import annotations

import re
import subprocess

from pipelines.settings import PROJECT_ROOT, load_compute

RETIRED = re.compile(r"NC\d+r?s_v3", re.IGNORECASE)  # the NCv3 series, as Azure names its sizes


def tracked_text_files():
    listed = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        path = PROJECT_ROOT / name
        try:
            yield name, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue


def test_no_retired_size_is_used_anywhere_in_the_repository():
    uses = [
        f"{name}:{number}: {line.strip()[:120]}"
        for name, text in tracked_text_files()
        for number, line in enumerate(text.splitlines(), 1)
        if RETIRED.search(line) and "retired" not in line.lower()
    ]
    assert uses == []


def test_the_endpoint_runs_on_a_current_gpu_size_with_a_price():
    import json

    endpoint = load_compute()["online_endpoint"]["instance_type"]
    assert not RETIRED.search(endpoint)
    assert endpoint == "Standard_NC8as_T4_v3"  # one T4 (16 GB): Phi-3-mini's ~7.6 GB fp16 weights fit
    pricing = json.loads((PROJECT_ROOT / "infra" / "pricing.json").read_text())
    assert endpoint in pricing["prices"]["vm_hourly"] and "retired" in pricing["prices"]["_endpoint_size"]
