"""The serverless (Model-as-a-Service) path against a real MLClient over the Azure REST simulation.

The simulation (tests/helpers/azure_transport.py, the ``azure_sim`` fixture; the serverless routes in
tests/helpers/serverless_routes.py) answers in the REST API's shapes, blob uploads included, and fails the test on
any request it does not expect. One thing stays outside it, simulated here and named where it is: the MLflow run in
which the service logs its losses (written into a local SQLite store, under the metric names the preset assumes).
"""

from __future__ import annotations

import json

import pytest

from pipelines.azure import serverless
from pipelines.azure.cli import EXIT_PREFLIGHT
from tests.helpers.serverless_routes import ServerlessRoutes, marketplace_subscription
from tests.helpers.serverless_service import ServiceRuns, make_plan, puts, run_submit


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
