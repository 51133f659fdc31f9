"""The local endpoint's commands: status (router, slots, traffic, recent requests), monitor, stop and teardown.

deploy_endpoint records the endpoint in ``$CHATFT_HOME/endpoints/<name>/endpoint.json`` (``chatft.local_server``
explains the layout); these commands read that traffic map and judge its PIDs the way the deployment does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from chatft.local_server import MAP_FILE, is_our_server, live_deployment, stop_server
from pipelines.endpoint_client import EndpointError, configured


def find_record(home: Path, name: str | None) -> tuple[Path, dict]:
    """The local endpoint's traffic map: (path, record)."""
    endpoints = home / "endpoints"
    if name:
        path = endpoints / name / MAP_FILE
        if not path.is_file():
            raise EndpointError(f"{path}: no such endpoint; deploy it with `make run` (deploy_endpoint target=local)")
    else:
        found = sorted(endpoints.glob(f"*/{MAP_FILE}"))
        if not found:
            raise EndpointError(f"no endpoint recorded in {endpoints}; deploy one with `make run` first")
        if len(found) > 1:
            names = ", ".join(p.parent.name for p in found)
            raise EndpointError(f"several endpoints in {endpoints} ({names}); pick one with --name")
        path = found[0]
    return path, json.loads(path.read_text(encoding="utf-8"))


def _get(url: str, timeout: float = 2.0):
    import requests

    try:
        return requests.get(url, timeout=timeout)
    except requests.RequestException:
        return None


def local_connection(record: dict) -> dict:
    live = record["deployments"].get(live_deployment(record) or "", {})
    model = f"{live.get('model_name')}:{live.get('model_version')}" if live else "no deployment"
    return {"url": record["url"], "headers": {}, "label": f"{record['endpoint_name']} ({model})"}


def stop(path: Path, record: dict) -> int:
    """Stop the router and every slot, then forget the traffic map (downloaded models stay for a re-deploy)."""
    processes = [("router", (record.get("router") or {}).get("pid"))]
    processes += [(slot, entry.get("pid")) for slot, entry in record.get("deployments", {}).items()]
    for label, pid in processes:
        state = "stopped" if stop_server(pid) else "was not running"
        print(f"{record['endpoint_name']}: {label} {state} (pid {pid})")
    path.unlink()
    return 0


def status_local(path: Path, record: dict, last: int = 200) -> int:
    router = record.get("router") or {}
    router_up = is_our_server(router.get("pid")) and _get(record["health_url"]) is not None  # any answer will do
    print(
        f"{record['endpoint_name']}: {record['url']}  (router pid {router.get('pid')}: {'up' if router_up else 'DOWN'})"
    )
    print(f"  traffic map: {path}")
    healthy = router_up
    for slot, entry in sorted(record.get("deployments", {}).items()):
        share = record.get("traffic", {}).get(slot, 0)
        answer = _get(f"http://127.0.0.1:{entry['port']}/") if is_our_server(entry["pid"]) else None
        state = "healthy" if answer is not None and answer.status_code == 200 else "not running"
        healthy &= state == "healthy" or share == 0
        print(
            f"  {slot:<6} {share:>3}%  {entry['model_name']}:{entry['model_version']}  {state}  "
            f"pid {entry['pid']}  port {entry['port']}  log {entry['log']}"
        )
    if not live_deployment(record):
        print("  no deployment takes traffic")
        healthy = False
    monitor_local(path, record, last)
    return 0 if healthy else 1


def monitor_local(path: Path, record: dict, last: int) -> int:
    """The last ``last`` requests of each slot, summarised (the slots' requests.jsonl)."""
    from chatft.serving.monitoring import format_summary, read_last, summarize

    print(f"  requests (last {last} per deployment; the slot's requests.jsonl):")
    for slot, entry in sorted(record.get("deployments", {}).items()):
        log = path.parent / slot / "requests.jsonl"
        label = f"{slot} ({entry['model_name']}:{entry['model_version']})"
        print(f"    {format_summary(label, summarize(read_last(log, last)))}")
    return 0


def teardown_local(home: Path, name: str | None, delete_model: bool) -> int:
    try:
        path, record = find_record(home, name)
    except EndpointError:
        if not name:
            raise
        path, record = home / "endpoints" / name / MAP_FILE, None
    models = {entry["model_name"] for entry in (record or {}).get("deployments", {}).values()}
    if record:
        stop(path, record)
    shutil.rmtree(path.parent, ignore_errors=True)
    print(f"deleted the local endpoint {path.parent.name} ({path.parent})")
    if delete_model:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        for model in sorted(models or {configured("register_model", "model_name", "local")}):
            client.delete_registered_model(model)
            print(f"deleted the registered model {model} and all its versions")
    else:
        print("the registered model stays (--delete-model / DELETE_MODEL=1 deletes it)")
    return 0


def manage_local(args, home: Path) -> int:
    """status / monitor / stop / teardown of the local endpoint."""
    if args.command == "teardown":
        return teardown_local(home, args.name, args.delete_model)
    path, record = find_record(home, args.name)
    if args.command == "stop":
        return stop(path, record)
    if args.command == "status":
        return status_local(path, record, args.last)
    print(f"{record['endpoint_name']}: {record['url']}")
    return monitor_local(path, record, args.last)
