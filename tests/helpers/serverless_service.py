"""The serverless path's test service: validated files and a plan without running the data steps, a loopback chat
endpoint, and the SIMULATED MLflow run the service logs its losses to (fixtures: tests/pipelines/serverless/)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from http.server import ThreadingHTTPServer
from pathlib import Path

from pipelines.azure import serverless
from pipelines.azure.plan import data_fingerprint
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.http_stubs import JsonHandler, serving

PRESET = PROJECT_ROOT / serverless.SERVERLESS_PRESET
# Test prices, not Azure's: they only check the arithmetic of the estimate.
TEST_PRICING = {
    "prices": {
        "training_per_1k_tokens": 0.01,
        "hosting_per_hour": 1.0,
        "input_per_1k_tokens": 0.001,
        "output_per_1k_tokens": 0.002,
    }
}


def validated(tmp_path: Path, settings, train: int = 12, validation: int = 4) -> serverless.ValidatedData:
    """Validated files as validate_chat_jsonl leaves them (the data steps themselves run in the slow dry-run test)."""
    files = []
    for split, count, seed in (("train", train, 0), ("validation", validation, 1)):
        path = tmp_path / split / f"{split}.jsonl"
        write_jsonl(path, make_conversations(count, seed=seed))
        fingerprint, records = data_fingerprint(path)
        files.append(serverless.ValidatedFile(split, path, fingerprint, records, f"chatft-test-{split}"))
    return serverless.ValidatedData(files[0], files[1], {"fingerprint": "f" * 64})


def make_plan(tmp_path: Path, overrides: dict | None = None) -> serverless.Plan:
    settings = load_settings(PRESET)
    if overrides:
        settings = replace(settings, serverless={**settings.serverless, **overrides})
    options = serverless.serverless_settings(settings)
    data = validated(tmp_path, settings)
    return serverless.Plan(settings, options, data, serverless.build_job(settings, options, data))


class ChatServer:
    """A loopback stand-in for the deployed model: answers /v1/chat/completions in the OpenAI shape."""

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(JsonHandler):
            def do_POST(self):
                body = self.read_json()
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                message = {"role": "assistant", "content": "Unplug it for 30 seconds."}
                self.send_json(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": "phi-3-ft",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
                    }
                )

        self._stack = contextlib.ExitStack()
        self.server = self._stack.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self._stack.close()


class ServiceRuns:
    """SIMULATED service metrics: when a job is created, its losses are logged to a local MLflow store, as the
    service logs them to the workspace's; the reader maps the job name to that run (on Azure they are the same id)."""

    def __init__(self, tmp_path: Path, validation=(1.9, 1.5, 1.2), training=(2.1, 1.6, 1.1), tracking_uri=None):
        self.tracking_uri = tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
        self.validation, self.training = validation, training
        self.run_ids: dict[str, str] = {}

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)  # opening the store creates its tables (seconds): only when used

    def log_for(self, job_name: str, names: dict[str, str]) -> None:
        experiment = self.client.get_experiment_by_name("service-runs") or None
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("service-runs")
        run_id = self.client.create_run(experiment_id).info.run_id
        for step, value in enumerate(self.validation):
            self.client.log_metric(run_id, names["validation_loss"], value, step=step)
        for step, value in enumerate(self.training):
            self.client.log_metric(run_id, names["training_loss"], value, step=step)
        self.run_ids[job_name] = run_id

    def reader(self, names: dict[str, str]):
        def read(job_name: str):
            self.log_for(job_name, names)
            return serverless.read_service_metrics(self.tracking_uri, self.run_ids[job_name], names)

        return read


def run_submit(plan, routes, runs, tmp_path) -> int:
    pricing = tmp_path / "pricing.json"
    pricing.write_text(json.dumps(TEST_PRICING))
    return serverless.submit_plan(
        plan,
        dry_run=False,
        output_root=tmp_path / "out",
        ml_client=routes.sim.client(),
        registry_client=routes.registry_client(),
        tracking_uri=runs.tracking_uri,
        pricing=pricing,
        metrics_reader=runs.reader(plan.serverless.metrics),
        sleep=lambda seconds: None,
    )


def puts(sim) -> list[str]:
    """The last two path segments of each PUT, in order, e.g. 'serverlessEndpoints/chat-ft-phi3-maas'."""
    return ["/".join(r.path.split("/")[-2:]) for r in sim.requests if r.method == "PUT"]
