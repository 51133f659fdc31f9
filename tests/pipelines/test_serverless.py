"""The serverless (Model-as-a-Service) path against a real MLClient over the Azure REST simulation.

The simulation (tests/helpers/azure_transport.py, the ``azure_sim`` fixture; the serverless routes in
tests/helpers/serverless_routes.py) answers in the REST API's shapes, blob uploads included, and fails the test on
any request it does not expect. One thing stays outside it, simulated here and named where it is: the MLflow run in
which the service logs its losses (written into a local SQLite store, under the metric names the preset assumes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipelines.azure import serverless
from pipelines.azure.cli import EXIT_PREFLIGHT
from pipelines.azure.plan import data_fingerprint
from pipelines.azure.serverless import cli as serverless_cli
from pipelines.settings import PROJECT_ROOT, SettingsError, load_settings
from tests.helpers import loopback_http
from tests.helpers.chat_data import make_conversations, write_jsonl
from tests.helpers.loopback_http import JsonHandler
from tests.helpers.serverless_routes import ServerlessRoutes, marketplace_subscription, serverless_endpoint

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


# ---- helpers ---------------------------------------------------------------------------------------------------
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

        self.server = loopback_http.start(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        loopback_http.stop(self.server)


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


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


@pytest.fixture
def routes(azure_sim, chat_server):
    """The simulation with the serverless routes; a created endpoint answers at the loopback chat server."""
    azure_sim.job_statuses = ["Queued", "Running", "Completed"]
    return ServerlessRoutes(azure_sim, scoring_uri=chat_server.url).install()


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


# ---- settings --------------------------------------------------------------------------------------------------
def test_preset_hyperparameters_are_strings_in_the_services_names():
    options = serverless.serverless_settings(load_settings(PRESET))
    assert options.hyperparameters == {
        "num_train_epochs": "1",
        "per_device_train_batch_size": "1",
        "learning_rate": "2e-05",
    }
    assert options.epochs == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hyperparameters": {"lora_rank": 8}}, "serverless.hyperparameters.lora_rank is not a documented"),
        ({"hyperparameters": {"num_train_epochs": 0}}, "must be a positive int"),
        ({"hyperparameters": {"num_train_epochs": 1.5}}, "must be a positive int"),
        ({"task": "Chat"}, "serverless.task 'Chat' is not one of"),
        ({"colour": "blue"}, "unknown key(s) serverless.colour"),
    ],
)
def test_bad_serverless_settings_name_file_and_key(change, message):
    settings = load_settings(PRESET)
    settings = replace(settings, serverless={**settings.serverless, **change})
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        serverless.serverless_settings(settings)
    assert "serverless.yaml" in str(err.value)


def test_an_unpinned_model_is_refused():
    settings = replace(load_settings(PRESET), base_model="azureml://registries/azureml/models/Phi-3-mini-4k-instruct")
    with pytest.raises(SettingsError, match="pinned version"):
        serverless.serverless_settings(settings)


def test_training_steps_are_refused_on_this_path():
    settings = load_settings(PRESET, ["finetune.learning_rate=1e-4"])
    with pytest.raises(SettingsError, match="steps.finetune do not run on the serverless path"):
        serverless.check_data_steps(settings)


# ---- the job and the dry run -----------------------------------------------------------------------------------
def test_job_yaml_loads_back_with_the_sdk(tmp_path):
    from azure.ai.ml import load_job

    plan = make_plan(tmp_path)
    path = serverless.write_dry_run(plan, tmp_path / "out")
    job = load_job(source=path)
    body = yaml.safe_load(path.read_text())
    assert body["type"] == "finetuning" and body["task"] == "chatCompletion"
    assert body["model"] == {"path": plan.settings.base_model, "type": "mlflow_model"}
    assert body["training_data"] == {"path": plan.data.train.uri, "type": "uri_file"}
    assert body["validation_data"]["path"] == plan.data.validation.uri
    assert job.hyperparameters == plan.serverless.hyperparameters
    assert job.outputs["registered_model"].name == "chat-ft-phi3-maas"
    written = json.loads(path.with_name("plan.json").read_text())
    assert [a["version"] for a in written["data_assets"]] == [plan.data.train.version, plan.data.validation.version]
    calls = [c["call"] for c in written["calls"]]
    assert calls.index("jobs.create_or_update(finetuning job)") < calls.index(
        "serverless_endpoints.begin_create_or_update(chat-ft-phi3-maas)"
    )


@pytest.mark.slow
def test_dry_run_runs_the_data_steps_and_writes_job_and_plan(tmp_path, capsys):
    """The whole `make submit BACKEND=serverless DRY_RUN=1`: prep and validate run locally, nothing goes out."""
    code = serverless_cli.main(serverless_cli.parse_args(["submit", "--dry-run", "--output-root", str(tmp_path)]))
    out = capsys.readouterr().out
    assert code == 0, out
    job = yaml.safe_load((tmp_path / "azure" / "serverless" / "finetuning_job.yml").read_text())
    plan = json.loads((tmp_path / "azure" / "serverless" / "plan.json").read_text())
    assert job["training_data"]["path"] == f"azureml:chatft-chat-data-train:{plan['data_assets'][0]['version']}"
    assert plan["data_assets"][0]["records"] + plan["data_assets"][1]["records"] == 300  # data/sample
    assert "GPU quota: none needed" in out and "offered in eastus2" in out


# ---- against the Azure REST simulation ---------------------------------------------------------------------
def test_submit_registers_trains_tracks_deploys_and_smoke_tests(tmp_path, routes, chat_server):
    sim = routes.sim
    runs = ServiceRuns(tmp_path)
    plan = make_plan(tmp_path)

    assert run_submit(plan, routes, runs, tmp_path) == 0

    # registration: both validated files uploaded and registered as uri_file assets versioned by fingerprint
    for file in plan.data.files:
        stored = sim.get("data", file.asset_name, file.version)["properties"]
        assert stored["dataType"] == "uri_file" and stored["tags"]["data_fingerprint"] == file.fingerprint
        assert stored["dataUri"].endswith(f"/{file.path.name}")
        assert file.path.read_bytes() in sim.blobs.values()
    # the job: model pinned, task, hyper-parameters, data by asset id, as sent on the wire
    (put_job,) = sim.sent("PUT", "/jobs/")
    details = put_job.body["properties"]["fineTuningDetails"]
    assert details["taskType"] == "chatCompletion" and details["modelProvider"] == "Custom"
    assert details["model"]["uri"].endswith("Phi-3-mini-4k-instruct/versions/4")
    assert details["hyperParameters"] == plan.serverless.hyperparameters
    assert details["trainingData"]["uri"].endswith(f"/data/chatft-test-train/versions/{plan.data.train.version}")
    job_name = put_job.path.rsplit("/", 1)[1]
    assert sim.get("jobs", job_name)["properties"]["status"] == "Completed"  # polled until it ended
    # deployment: no marketplace subscription for a Microsoft model, then the endpoint on the fine-tuned model
    assert not sim.sent("PUT", "/marketplaceSubscriptions/")
    endpoint = routes.stored("serverlessEndpoints")["chat-ft-phi3-maas"]
    workspace_guid = sim._workspace()["properties"]["workspaceId"]
    assert endpoint["properties"]["modelSettings"]["modelId"] == (
        f"azureml://locations/eastus2/workspaces/{workspace_guid}/models/chat-ft-phi3-maas/versions/1"
    )
    # smoke test: the guide's question, OpenAI shape, the key from listKeys
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sim-primary-key"
    assert request["body"]["messages"] == [{"role": "user", "content": "How do I restart my router?"}]
    # tracking: one run with the fingerprint, the reported losses and the eval_report
    from mlflow import MlflowClient

    client = MlflowClient(runs.tracking_uri)
    experiment = client.get_experiment_by_name(plan.settings.experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["data_fingerprint"] == "f" * 64 and run.data.tags["job_name"] == job_name
    assert run.data.metrics["tuned_loss"] == pytest.approx(1.2)
    assert run.data.metrics["quality_gate_passed"] == 1.0
    report = json.loads((tmp_path / "out/azure/serverless" / job_name / "eval_report/eval_report.json").read_text())
    assert report["metrics"]["tuned"]["perplexity"] == pytest.approx(3.3201, abs=1e-3)
    assert {c["name"]: c["ran"] for c in report["quality_gate"]["checks"]} == {
        "beats_base": False,
        "validation_loss_fell": True,
        "no_regression_vs_champion": False,
    }


@pytest.mark.slow
def test_tracking_uses_only_routes_azure_ml_serves(tmp_path, routes, azureml_tracking):
    """The same submit, tracking to the Azure-ML-shaped MLflow server (it refuses what Azure ML does not serve)."""
    from mlflow import MlflowClient

    start = len(azureml_tracking.requests)  # the proxy is shared by the session: look at this test's requests only
    runs = ServiceRuns(tmp_path, tracking_uri=azureml_tracking.uri)
    plan = make_plan(tmp_path)
    assert run_submit(plan, routes, runs, tmp_path) == 0
    routes.sim.job_statuses = ["Completed"]
    assert run_submit(plan, routes, runs, tmp_path) == 0  # the second one searches the first as its champion
    assert azureml_tracking.refused(since=start) == []
    client = MlflowClient(azureml_tracking.uri)
    experiment = client.get_experiment_by_name(plan.settings.experiment_name)
    first, second = client.search_runs(
        [experiment.experiment_id], filter_string="tags.chatft_path = 'serverless'", order_by=["start_time ASC"]
    )
    assert first.info.run_id in second.data.tags["quality_gate"]  # compared with the champion: the first run
    run = second
    # the report went up through the server's artifact proxy (listing it back would ask the LoggedModel API)
    uploads = [r for r in azureml_tracking.requests if r[0] == "PUT" and run.info.run_id in r[1]]
    assert [(path.endswith("eval_report/eval_report.json"), status) for _, path, status in uploads] == [(True, 200)]


def test_unchanged_data_is_not_uploaded_again(tmp_path, routes):
    sim = routes.sim
    runs = ServiceRuns(tmp_path)
    plan = make_plan(tmp_path)
    assert run_submit(plan, routes, runs, tmp_path) == 0
    blob_puts = len(sim.sent("PUT", r"\.blob\.core\.windows\.net/"))
    sim.job_statuses = ["Completed"]

    assert run_submit(plan, routes, runs, tmp_path) == 0
    assert len(sim.sent("PUT", "/data/")) == 2 and len(sim.sent("PUT", "/jobs/")) == 2  # registered once, trained twice
    assert len(sim.sent("PUT", r"\.blob\.core\.windows\.net/")) == blob_puts  # nothing uploaded the second time


def test_a_failed_job_stops_before_tracking_and_deployment(tmp_path, routes, chat_server, capsys):
    routes.sim.job_statuses = ["Queued", "Running", "Failed"]
    runs = ServiceRuns(tmp_path)

    assert run_submit(make_plan(tmp_path), routes, runs, tmp_path) == serverless.EXIT_JOB_FAILED
    assert "ended: Failed" in capsys.readouterr().err
    assert routes.stored("serverlessEndpoints") == {} and chat_server.requests == [] and runs.run_ids == {}


def test_a_failed_gate_tracks_the_run_but_does_not_deploy(tmp_path, routes, chat_server, capsys):
    runs = ServiceRuns(tmp_path, validation=(1.2, 1.4, 1.6))  # held-out loss rose: overfitting

    assert run_submit(make_plan(tmp_path), routes, runs, tmp_path) == serverless.EXIT_GATE
    assert "validation loss 1.2000 → 1.6000" in capsys.readouterr().out
    assert routes.stored("serverlessEndpoints") == {} and chat_server.requests == []


def test_no_reported_validation_loss_fails_the_gate(tmp_path, routes, capsys):
    runs = ServiceRuns(tmp_path, validation=())  # e.g. the metric names in the preset are not the service's

    assert run_submit(make_plan(tmp_path), routes, runs, tmp_path) == serverless.EXIT_GATE
    assert "the job logged no finite 'eval_loss' series" in capsys.readouterr().out
    assert routes.stored("serverlessEndpoints") == {}


def test_a_worse_run_than_the_champion_fails_the_gate(tmp_path, routes, capsys):
    plan = make_plan(tmp_path)
    assert run_submit(plan, routes, ServiceRuns(tmp_path), tmp_path) == 0
    routes.sim.resources.clear()  # a fresh workspace: only the MLflow history remains
    routes.sim.job_statuses = ["Completed"]

    worse = ServiceRuns(tmp_path, validation=(1.9, 1.6, 1.5))  # fell, but ends above the champion's 1.2
    assert run_submit(plan, routes, worse, tmp_path) == serverless.EXIT_GATE
    assert "> 1 × champion run" in capsys.readouterr().out
    assert routes.stored("serverlessEndpoints") == {}


def test_subscription_is_created_before_the_endpoint_when_the_offer_needs_one(tmp_path, routes):
    plan = make_plan(tmp_path, {"marketplace_subscription": True, "subscription_name": "phi-sub"})

    assert run_submit(plan, routes, ServiceRuns(tmp_path), tmp_path) == 0
    order = puts(routes.sim)
    assert order.index("marketplaceSubscriptions/phi-sub") < order.index("serverlessEndpoints/chat-ft-phi3-maas")
    sent = routes.stored("marketplaceSubscriptions")["phi-sub"]["properties"]["modelId"]
    assert sent == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct"  # the offer: no version


def test_an_existing_subscription_is_not_created_again(tmp_path, routes):
    routes.add(marketplace_subscription("phi-sub", "azureml://registries/azureml/models/Phi-3-mini-4k-instruct"))
    plan = make_plan(tmp_path, {"marketplace_subscription": True, "subscription_name": "phi-sub"})

    assert run_submit(plan, routes, ServiceRuns(tmp_path), tmp_path) == 0
    assert "marketplaceSubscriptions/phi-sub" not in puts(routes.sim)


def test_a_region_without_the_offer_fails_before_anything_is_created(tmp_path, routes, capsys):
    routes.sim._workspace = lambda default=routes.sim._workspace: {**default(), "location": "westeurope"}

    assert run_submit(make_plan(tmp_path), routes, ServiceRuns(tmp_path), tmp_path) == EXIT_PREFLIGHT
    out = capsys.readouterr()
    assert "the workspace is in westeurope" in out.out and "offered only in eastus2" in out.out
    assert [r for r in routes.sim.requests if r.method in ("PUT", "POST", "DELETE")] == [] and routes.sim.blobs == {}


def test_the_catalog_tag_decides_the_region_when_the_model_has_one(tmp_path, azure_sim, chat_server, capsys):
    azure_sim.job_statuses = ["Completed"]
    routes = ServerlessRoutes(
        azure_sim, scoring_uri=chat_server.url, region="westeurope", catalog_regions="eastus2, westeurope"
    ).install()

    assert run_submit(make_plan(tmp_path), routes, ServiceRuns(tmp_path), tmp_path) == 0
    assert "catalog tag maas-finetuning-deploy-regions" in capsys.readouterr().out
    assert routes.stored("serverlessEndpoints")["chat-ft-phi3-maas"]["location"] == "westeurope"


def test_preflight_offline_says_no_gpu_quota_and_estimates_cost(tmp_path):
    plan = make_plan(tmp_path)
    pricing = serverless.load_pricing()
    pricing["prices"].update(TEST_PRICING["prices"])
    report = serverless.run_preflight(plan.settings, plan.serverless, plan.data, pricing)
    assert report.ok and "GPU quota: none needed" in report.text
    tokens = serverless.estimate_tokens(plan.data.train.path, pricing["tokens"])
    assert f"training: {tokens / 1000:,.1f} k tokens × 0.01 = {tokens / 1000 * 0.01:,.2f} USD" in report.text
    assert "hosting: 24.0 h deployed × 1 = 24.00 USD" in report.text


def test_preflight_says_when_prices_are_unknown(tmp_path):
    plan = make_plan(tmp_path)
    pricing = serverless.load_pricing()
    report = serverless.run_preflight(plan.settings, plan.serverless, plan.data, pricing)
    assert "price unknown (training_per_1k_tokens is null" in report.text and "total: not estimated" in report.text


# ---- teardown --------------------------------------------------------------------------------------------------
def test_teardown_deletes_the_endpoint_and_on_request_the_subscription(routes):
    routes.add(serverless_endpoint("chat-ft-phi3-maas", "m", "eastus2", "http://127.0.0.1:9"))
    routes.add(marketplace_subscription("phi-3-mini-4k-instruct-sub", "m"))
    settings = load_settings(PRESET)
    client = routes.sim.client()

    assert serverless.teardown(settings, delete_subscription=False, ml_client=client) == 0
    assert routes.stored("serverlessEndpoints") == {} and "phi-3-mini-4k-instruct-sub" in routes.stored(
        "marketplaceSubscriptions"
    )
    assert serverless.teardown(settings, delete_subscription=True, ml_client=client) == 0
    assert routes.stored("marketplaceSubscriptions") == {}
    assert routes.sim.sent("DELETE", "/serverlessEndpoints/chat-ft-phi3-maas$")[0].status == 202


# ---- make chat / ask / status / teardown TARGET=serverless -----------------------------------------------------
def test_ask_target_serverless_finds_the_endpoint_in_the_workspace(routes, chat_server, capsys):
    from pipelines import endpoint as endpoint_cli

    routes.add(serverless_endpoint("chat-ft-phi3-maas", "m", "eastus2", chat_server.url))
    args = endpoint_cli.parse_args(["--target", "serverless", "ask", "Is it on?", "--max_new_tokens", "32"])

    assert endpoint_cli.main(args, ml_client=routes.sim.client()) == 0
    assert capsys.readouterr().out.strip() == "Unplug it for 30 seconds."
    (request,) = chat_server.requests
    assert request["body"] == {"messages": [{"role": "user", "content": "Is it on?"}], "max_tokens": 32}
    assert request["auth"] == "Bearer sim-primary-key"

    status = endpoint_cli.parse_args(["--target", "serverless", "status"])
    assert endpoint_cli.main(status, ml_client=routes.sim.client()) == 0
    teardown = endpoint_cli.parse_args(["--target", "serverless", "teardown"])
    assert endpoint_cli.main(teardown, ml_client=routes.sim.client()) == 0
    assert routes.stored("serverlessEndpoints") == {}


def test_chat_target_serverless_takes_url_and_key_from_the_environment(chat_server, monkeypatch):
    from pipelines import endpoint as endpoint_cli

    monkeypatch.setenv("CHATFT_SERVERLESS_URL", chat_server.url)
    monkeypatch.setenv("CHATFT_SERVERLESS_KEY", "env-key")
    connection = endpoint_cli.serverless_connection("any")
    assert endpoint_cli.generate(connection, [{"role": "user", "content": "hi"}], {}) == "Unplug it for 30 seconds."
    assert chat_server.requests[0]["auth"] == "Bearer env-key"
