"""The serverless (Model-as-a-Service) path: the service fine-tunes a catalog model on its own compute.

    python -m pipelines.azure.serverless submit --dry-run  # job YAML (reloaded by the SDK) + plan of calls; no network
    python -m pipelines.azure.serverless submit            # preflight, upload, fine-tune, track, gate, deploy, smoke
    python -m pipelines.azure.serverless preflight         # region, marketplace subscription, cost; no GPU quota
    python -m pipelines.azure.serverless teardown [--delete-subscription]

Exit codes: those of pipelines/azure/cli.py (2 bad settings or data, 3 preflight refused, 4 the job ended Failed or
Canceled), and 5 the quality gate failed on what the service reported, 6 the endpoint failed to deploy or answer.

A submission, in order (nothing is created before step 3):
  1. data: the same prep_data and validate_chat_jsonl components as the pipeline, run locally by the local backend;
     the validated train.jsonl and validation.jsonl are what the service sees;
  2. plan and preflight: the fine-tuning job built with ``azure.ai.ml.finetuning.create_finetuning_job`` (model
     pinned, task chatCompletion, hyper-parameters from pipelines/config/serverless.yaml); the workspace region
     against the regions the model's fine-tuning is offered in, the marketplace subscription, a cost estimate;
  3. register each validated file as a ``uri_file`` data asset whose version is its fingerprint (only if missing);
  4. create the job, print its Studio URL, poll its status until it ends;
  5. on success: the service's reported losses as an eval_report, the quality gate, an MLflow run with the data
     fingerprints; if the gate passed: the MarketplaceSubscription (when the offer needs one and it is missing),
     then the ServerlessEndpoint, then a smoke test with the guide's chat request.
Dry run (``--dry-run``) runs 1 and 2 offline and writes outputs/azure/serverless/: finetuning_job.yml and plan.json.

One module per step: settings (the preset's ``serverless`` section, constants, errors), data (1 and 3), plan and
preflight (2), submit (3-5, in order), report (the gate and MLflow), deploy (the endpoint, teardown); cli (the
command line above, whose help is this docstring).
"""

from pipelines.azure.serverless.data import ValidatedData, ValidatedFile, ensure_data_files, prepare_data
from pipelines.azure.serverless.deploy import chat_completions, registry_client_for, smoke_test, teardown
from pipelines.azure.serverless.plan import Plan, build_job, make_plan, planned_calls, write_dry_run
from pipelines.azure.serverless.preflight import estimate_cost, estimate_tokens, load_pricing, run_preflight
from pipelines.azure.serverless.report import eval_report, read_service_metrics, track
from pipelines.azure.serverless.settings import (
    EXIT_DEPLOY,
    EXIT_GATE,
    EXIT_JOB_FAILED,
    PRICING_FILE,
    SERVERLESS_PRESET,
    ServerlessError,
    ServerlessSettings,
    check_data_steps,
    serverless_settings,
)
from pipelines.azure.serverless.submit import run_plan, submit, submit_plan

__all__ = [
    "EXIT_DEPLOY",
    "EXIT_GATE",
    "EXIT_JOB_FAILED",
    "PRICING_FILE",
    "SERVERLESS_PRESET",
    "Plan",
    "ServerlessError",
    "ServerlessSettings",
    "ValidatedData",
    "ValidatedFile",
    "build_job",
    "chat_completions",
    "check_data_steps",
    "ensure_data_files",
    "estimate_cost",
    "estimate_tokens",
    "eval_report",
    "load_pricing",
    "make_plan",
    "planned_calls",
    "prepare_data",
    "read_service_metrics",
    "registry_client_for",
    "run_plan",
    "run_preflight",
    "serverless_settings",
    "smoke_test",
    "submit",
    "submit_plan",
    "teardown",
    "track",
    "write_dry_run",
]
