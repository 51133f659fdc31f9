"""The local target of the rollout: one azureml-inference-server-http process per slot, a traffic map, a router.

The model is downloaded to ``$CHATFT_HOME/endpoints/<name>/models/<version>/``; each slot is a server on a free
loopback port (``serve_local.py``), and a small router on ``127.0.0.1:<port>`` is the endpoint's stable URL;
``endpoints/<name>/endpoint.json`` is the traffic map they follow (``chatft.local_server`` explains the layout).
Processes outlive the deployment step; ``make stop`` / ``make teardown`` end them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from chatft.deployment.rollout import DeployError, Probe
from chatft.errors import ChatftError
from chatft.local_server import (
    DEPLOYMENT_HEADER,
    MAP_FILE,
    ROUTER_MODULE,
    is_our_server,
    live_deployment,
    read_map,
    stop_server,
    write_map,
)
from chatft.processes import LOOPBACK, accepting, free_port, http_ok, port_in_use, spawn_detached, wait_until
from chatft.serving.launch import copy_chatft, server_env, stage_code, start_server, wait_healthy

STARTUP_TIMEOUT_S = 300  # model load in the worker: ~5 s for SmolLM2 on 2 cores; a 3.8B model on CPU takes minutes
ROUTER_STARTUP_TIMEOUT_S = 30
REQUEST_TIMEOUT_S = 120  # one smoke request


@contextlib.contextmanager
def deploy_lock(path: Path):
    """One rollout per endpoint at a time: a second waits for the first instead of corrupting the map."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def download_model(model_info: dict, models_dir: Path) -> Path:
    """The registered model's files under ``models_dir/<version>`` (downloaded once per version)."""
    target = models_dir / str(model_info["version"])
    if (target / "MLmodel").is_file():
        return target
    import mlflow

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    uri = f"models:/{model_info['name']}/{model_info['version']}"
    print(f"downloading {uri} to {target}", flush=True)
    mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(partial))
    partial.rename(target)  # atomic: an interrupted download never looks complete
    return target


def start_router(endpoint_home: Path, port: int) -> subprocess.Popen:
    """The endpoint's stable URL: ``chatft.local_server`` serving 127.0.0.1:port by the traffic map."""
    code_dir = endpoint_home / "router"
    shutil.rmtree(code_dir, ignore_errors=True)
    copy_chatft(code_dir)
    command = [sys.executable, "-m", ROUTER_MODULE, "--map", str(endpoint_home / MAP_FILE), "--port", str(port)]
    log_path = endpoint_home / "router.log"
    process = spawn_detached(command, code_dir, server_env(code_dir), log_path)
    try:
        wait_until(
            lambda: accepting(port), process, f"the router on {LOOPBACK}:{port}", log_path, ROUTER_STARTUP_TIMEOUT_S
        )
    except BaseException:
        stop_server(process.pid)
        raise
    return process


def http_probe(url: str, where: str, deployment: str | None = None) -> Probe:
    """Smoke requests POSTed to ``url``; with ``deployment``, that slot must be the one that answered."""
    import requests

    def send(request: dict) -> tuple[int, str, str | None]:
        try:
            response = requests.post(url, json=request, timeout=REQUEST_TIMEOUT_S)
        except requests.RequestException as err:
            raise DeployError(f"smoke test against {where} failed: {err}") from None
        return response.status_code, response.text, response.headers.get(DEPLOYMENT_HEADER)

    return Probe(send, where, deployment)


def retire_slot(record: dict, slot: str, endpoint_home: Path) -> None:
    """Stop a slot's server and forget it (its share of traffic too); its folder goes with it."""
    entry = record["deployments"].pop(slot, None)
    record["traffic"].pop(slot, None)
    if entry:
        stop_server(entry.get("pid"))
    shutil.rmtree(endpoint_home / slot, ignore_errors=True)


def retire_legacy_record(path: Path) -> None:
    """An endpoint recorded by the single-server version of this step (endpoints/<name>.json): stop and forget it."""
    legacy = read_map(path)
    if legacy:
        print(f"stopping the single-server endpoint recorded in {path} (pid {legacy.get('pid')})", flush=True)
        stop_server(legacy.get("pid"))
        path.unlink()


class LocalTarget:
    """The rollout's steps on this machine, for the endpoint under ``home/endpoints/<name>`` on ``port``.

    Open it under ``deploy_lock``: it reads the traffic map once and writes it back at every step."""

    removed = "removed"
    clean_up_always = True  # an interrupted start must not leave a server running
    failures = (ChatftError,)  # a slot that would not start, a failed smoke test

    def __init__(self, model_info: dict, endpoint_name: str, port: int, home: Path, source: Path):
        self.model_info, self.endpoint_name, self.port, self.source = model_info, endpoint_name, port, source
        self.home = home / "endpoints" / endpoint_name
        self.map_path = self.home / MAP_FILE
        retire_legacy_record(home / "endpoints" / f"{endpoint_name}.json")
        record = read_map(self.map_path) or {"endpoint_name": endpoint_name, "deployments": {}, "traffic": {}}
        record.update({"map": str(self.map_path), "url": f"http://{LOOPBACK}:{port}/score"})
        record["health_url"] = f"http://{LOOPBACK}:{port}/"
        self.record = record
        router = record.get("router") or {}
        self.router_ok = router.get("port") == port and is_our_server(router.get("pid")) and accepting(port)
        if not self.router_ok:  # the URL's port must be ours to take before anything starts
            stop_server(router.get("pid"))
            if port_in_use(port):
                raise DeployError(f"port {port} on 127.0.0.1 is in use by another program; set deploy_endpoint.port")
        self.process: subprocess.Popen | None = None

    @property
    def traffic(self) -> dict[str, int]:
        return self.record["traffic"]

    def live(self) -> str | None:
        return live_deployment(self.record)

    def serves(self, slot: str) -> bool:
        entry = self.record["deployments"].get(slot)
        wanted = (self.model_info["name"], str(self.model_info["version"]))
        return (
            bool(entry)
            and (entry["model_name"], entry["model_version"]) == wanted
            and is_our_server(entry["pid"])
            and http_ok(f"http://{LOOPBACK}:{entry['port']}/")
        )

    def keep(self, slot: str) -> Probe:
        """Check the live slot through the router, restarting only a dead router."""
        self._ensure_router()
        return http_probe(self.record["url"], f"{self.endpoint_name} ({self.record['url']})", slot)

    def prepare(self, slot: str) -> None:
        # A leftover in the idle slot (an interrupted run) goes first.
        if slot in self.record["deployments"]:
            retire_slot(self.record, slot, self.home)
            write_map(self.map_path, self.record)
        shutil.rmtree(self.home / slot, ignore_errors=True)
        self.model_dir = download_model(self.model_info, self.home / "models")

    def start(self, slot: str) -> Probe:
        slot_dir = self.home / slot
        code_dir = stage_code(self.source, slot_dir / "code", with_launcher=True)
        self.slot_port, self.log_path = free_port(), slot_dir / "server.log"
        env = server_env(code_dir, self.log_path.with_name("requests.jsonl"))
        started = time.perf_counter()
        self.process = start_server(code_dir, self.model_dir, self.slot_port, self.log_path, env)
        wait_healthy(self.process, self.slot_port, self.log_path, STARTUP_TIMEOUT_S)
        self.startup_s = time.perf_counter() - started
        url = f"http://{LOOPBACK}:{self.slot_port}/score"
        return http_probe(url, f"deployment {slot} (port {self.slot_port})")

    def failure(self, err: BaseException, slot: str) -> str:
        return str(err)

    def remove(self, slot: str) -> None:
        # The new slot goes; the map (and so the traffic) is left as it was.
        if self.process is not None:
            stop_server(self.process.pid)
        shutil.rmtree(self.home / slot, ignore_errors=True)

    def route(self, slot: str) -> Probe:
        """Record the new slot at 0% (a crash from here on leaves nothing untracked), then swap in one write."""
        self.record["deployments"][slot] = {
            "pid": self.process.pid,
            "port": self.slot_port,
            "model_name": self.model_info["name"],
            "model_version": str(self.model_info["version"]),
            "model_uri": self.model_info["model_uri"],
            "model_dir": str(self.model_dir),
            "log": str(self.log_path),
            "startup_seconds": round(self.startup_s, 2),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.traffic.setdefault(slot, 0)
        write_map(self.map_path, self.record)
        self._ensure_router(write=False)
        # The swap: one atomic write; the router sends the next request to the new slot.
        self.previous_traffic = dict(self.traffic)
        self.record["traffic"] = {slot: 100, **{name: 0 for name in self.record["deployments"] if name != slot}}
        write_map(self.map_path, self.record)
        return http_probe(self.record["url"], f"{self.endpoint_name} ({self.record['url']})", slot)

    def unroute(self, slot: str) -> None:
        self.record["traffic"] = self.previous_traffic
        retire_slot(self.record, slot, self.home)
        write_map(self.map_path, self.record)

    def retire(self, slot: str, previous: str | None) -> None:
        if previous:
            retire_slot(self.record, previous, self.home)
            write_map(self.map_path, self.record)
        in_use = {Path(d["model_dir"]).name for d in self.record["deployments"].values()}
        for old in (self.home / "models").iterdir():  # only served versions stay on disk
            if old.name not in in_use:
                shutil.rmtree(old, ignore_errors=True)

    def summary(self, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict:
        entry, url = self.record["deployments"][slot], self.record["url"]
        if reused:
            served = f"{entry['model_name']}:{entry['model_version']}"
            print(
                f"kept {self.endpoint_name}: {slot} already serves {served} at {url} (pid {entry['pid']})", flush=True
            )
        else:
            removed = f"; removed {previous}" if previous else ""
            print(
                f"{self.endpoint_name}: 100% to {slot} ({entry['model_name']}:{entry['model_version']}, pid "
                f"{entry['pid']}, healthy after {self.startup_s:.1f} s){removed}. URL {url}; smoke test replied "
                f"{outputs[0]!r}",
                flush=True,
            )
        return endpoint_info(self.record, slot, previous, reused, outputs)

    def _ensure_router(self, write: bool = True) -> None:
        if not self.router_ok:
            self.record["router"] = {"pid": start_router(self.home, self.port).pid, "port": self.port}
            self.router_ok = True
            if write:
                write_map(self.map_path, self.record)


def endpoint_info(record: dict, slot: str, previous: str | None, reused: bool, outputs: list[str]) -> dict:
    """endpoint_info.json's fields for target=local, from the traffic map."""
    entry = record["deployments"][slot]
    return {
        "endpoint_name": record["endpoint_name"],
        "url": record["url"],
        "health_url": record["health_url"],
        "port": record["router"]["port"],
        "router_pid": record["router"]["pid"],
        "traffic": dict(record["traffic"]),
        "deployment_name": slot,
        "previous_deployment": previous,
        "pid": entry["pid"],
        "slot_port": entry["port"],
        "model_name": entry["model_name"],
        "model_version": entry["model_version"],
        "model_uri": entry["model_uri"],
        "log": entry["log"],
        "startup_seconds": entry["startup_seconds"],
        "map": record["map"],
        "reused": reused,
        "smoke_test_outputs": outputs,
    }
