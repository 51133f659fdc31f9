"""Shared fixtures. Every test runs offline: hub access is disabled and sockets may only reach loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl

_AZURE_CREDENTIAL_VARS = [
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
]


def pytest_configure(config):
    """Under pytest-xdist, give each worker its share of the cores: N workers each starting a thread per core
    would oversubscribe them (torch's OpenMP threads spin while waiting). Component scripts the tests start
    inherit the setting."""
    xdist_controller = config.getoption("numprocesses", None) and not hasattr(config, "workerinput")
    if not xdist_controller:  # it runs no test
        # In-process tests build MLClients of their own (tests/helpers/azure_transport.py): give them the SDK check
        # that the project's client factory installs (pipelines/sdk_private.py says why).
        from pipelines import sdk_private

        sdk_private.fast_experimental_check()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, threads)


# Seconds each test module took in a measured run (`make test ARGS=--record-durations` rewrites it). The workers take
# modules longest first, so the last module to start is a short one and no core idles at the end of the run: with
# xdist's default order (most tests first) the 60 s end-to-end module started last and one core idled for a minute.
DURATIONS_FILE = Path(__file__).with_name("durations.json")


def pytest_addoption(parser):
    parser.addoption(
        "--record-durations", action="store_true", help=f"write each module's measured seconds to {DURATIONS_FILE}"
    )


def _recorded_durations() -> dict[str, float]:
    return json.loads(DURATIONS_FILE.read_text())["seconds"] if DURATIONS_FILE.is_file() else {}


def _module(nodeid: str) -> str:
    return nodeid.split("::")[0]


def pytest_collection_modifyitems(config, items):
    """Run modules longest first (a stable sort: the order inside a module stays). Every xdist worker collects and
    sorts alike, as xdist requires; the Makefile's --no-loadscope-reorder keeps this order."""
    seconds = _recorded_durations()
    items.sort(key=lambda item: -seconds.get(_module(item.nodeid), 0.0))


_measured: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    _measured[_module(report.nodeid)] += report.duration


def pytest_sessionfinish(session):
    # Only the controller writes (under xdist it sees every worker's reports); a partial run keeps the rest.
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        merged = {**_recorded_durations(), **{module: round(total, 1) for module, total in _measured.items()}}
        ordered = dict(sorted(merged.items(), key=lambda kv: -kv[1]))
        DURATIONS_FILE.write_text(json.dumps({"seconds": ordered}, indent=1) + "\n")


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes | str) and str(host) in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Fail any test that tries to reach beyond this machine, or could pick up Azure credentials."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    for name in _AZURE_CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise OSError(f"test tried to reach {address!r}: tests must stay offline")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture
def chat_dir(tmp_path):
    """A folder with one 20-line valid chat JSONL file."""
    write_jsonl(tmp_path / "chats" / "chats.jsonl", make_conversations(20))
    return tmp_path / "chats"


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory):
    """A tiny random Phi-3 (Phi3Config, fused qkv/gate_up) with a small tokenizer and Phi-3's chat template."""
    from tests.helpers.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_phi3"), arch="phi3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (the architecture of the local SmolLM2 default) with a ChatML template."""
    from tests.helpers.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama")


class MlflowStore(NamedTuple):
    uri: str
    client: object  # mlflow.MlflowClient
    experiment_id: str


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory):
    """One SQLite MLflow store for the whole session: creating its tables takes ~4 s."""
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}", root


@pytest.fixture(scope="module")
def mlflow_store(mlflow_db, request) -> MlflowStore:
    """An experiment of its own for each test module, in the shared store, artifacts kept under tmp."""
    from mlflow import MlflowClient

    uri, root = mlflow_db
    client = MlflowClient(tracking_uri=uri)
    name = request.module.__name__
    experiment_id = client.create_experiment(name, artifact_location=(root / name).as_uri())
    return MlflowStore(uri, client, experiment_id)


@pytest.fixture
def mlflow_env(mlflow_store, monkeypatch) -> MlflowStore:
    """Every run a component script starts lands in the test store, as the local backend's env vars arrange
    (never in ./mlruns of the working directory). Use with ``pytestmark = pytest.mark.usefixtures("mlflow_env")``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", mlflow_store.experiment_id)
    return mlflow_store


@pytest.fixture
def azure_sim(monkeypatch):
    """The simulated Azure ML REST API (tests/helpers/azure_transport.py), blob uploads included; ``azure_sim.client()``
    is a real MLClient sending through it. Fails the test on any request it had no answer for, even one the SDK
    caught and swallowed (an upload thread, a best-effort lookup)."""
    from tests.helpers.azure_transport import AzureRestSimulation

    sim = AzureRestSimulation()
    sim.route_storage(monkeypatch)
    yield sim
    assert not sim.unexpected, f"requests the simulation did not expect: {[str(r) for r in sim.unexpected]}"


@pytest.fixture(scope="session")
def azureml_tracking(tmp_path_factory):
    """A simulation of Azure ML's MLflow tracking service, shared by the session (it takes seconds to start): a real
    ``mlflow server`` on loopback behind a proxy that answers 404 to the routes Azure ML does not serve
    (tests/helpers/azureml_tracking_proxy.py). Yields a ``TrackingProxy``: ``.uri`` and the ``.requests`` it saw."""
    from tests.helpers.azureml_tracking_proxy import azureml_like_tracking

    with azureml_like_tracking(tmp_path_factory.mktemp("azureml_tracking")) as proxy:
        yield proxy
