"""Build the fine-tuning pipeline and run it locally (default) or submit it to Azure ML.

python -m pipelines.run                                  # local, pipelines/config/local.yaml
python -m pipelines.run --set finetune.learning_rate=1e-4
python -m pipelines.run --backend azure --dry-run        # resolved YAML, no network
python -m pipelines.run --backend azure                  # submit (needs az login + a workspace)
python -m pipelines.run --backend azure --data data/     # ... training on local JSONL, registered as a data asset
python -m pipelines.run --backend serverless --dry-run   # the service fine-tunes (pipelines/azure/serverless/)
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

from chatft.errors import UsageError, exit_on_error
from pipelines import sdk_private
from pipelines.azure.cli import add_azure_arguments
from pipelines.settings import PACKAGED_SMOLLM2, PROJECT_ROOT, RunSettings, load_settings, project_path

DEFAULT_CONFIG = {
    "local": "pipelines/config/local.yaml",
    "azure": "pipelines/config/azure.yaml",
    "serverless": "pipelines/config/serverless.yaml",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend", choices=list(DEFAULT_CONFIG), default="local", help="where it trains (serverless: the service)"
    )
    parser.add_argument("--config", help="preset YAML (default: pipelines/config/<backend>.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="STEP.INPUT=VALUE", help="override an input"
    )
    parser.add_argument("--output-root", default="outputs", help="local backend: where everything is written")
    parser.add_argument("--force-rerun", action="store_true", help="local backend: ignore reusable step outputs")
    parser.add_argument("--quiet", action="store_true", help="local backend: step logs to files only")
    parser.add_argument("--dry-run", action="store_true", help="azure backend: write the resolved YAML, submit nothing")
    add_azure_arguments(parser, dry_run=False)  # --data, --tokens, --data-report, --pricing, --no-stream
    return parser.parse_args(argv)


def prepare_base_model(settings: RunSettings, output_root: Path) -> str:
    """Turn ``packaged:smollm2`` into a converted local folder (done once, then cached)."""
    if settings.base_model != PACKAGED_SMOLLM2:
        return settings.base_model
    from chatft.model_source import convert_packaged_smollm2

    target = output_root / "models" / settings.base_model_name
    if not (target / "config.json").is_file():
        print(f"Converting the packaged SmolLM2 GGUF to {target} (once) ...", flush=True)
        started = time.perf_counter()
        convert_packaged_smollm2(target)
        print(f"  converted in {time.perf_counter() - started:.1f} s", flush=True)
    return str(target)


def time_table(result) -> str:
    """Where the time went: each step's seconds and share of the run (reused steps cost nothing but a lookup)."""
    total = max(result.seconds, 1e-9)
    lines = ["Where the time went:"]
    for step in sorted(result.steps, key=lambda s: s.seconds, reverse=True):
        how = "reused" if step.status == "reused" else f"{step.seconds:7.1f} s  {step.seconds / total:4.0%}"
        lines.append(f"  {step.name:<22} {how}")
    overhead = result.seconds - sum(s.seconds for s in result.steps)
    lines.append(f"  {'(backend overhead)':<22} {overhead:7.1f} s  {overhead / total:4.0%}")
    return "\n".join(lines)


def run_local(args: argparse.Namespace, settings: RunSettings) -> int:
    from pipelines.finetune_pipeline import build_pipeline
    from pipelines.local_backend import LocalBackend

    output_root = project_path(args.output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    base_model = prepare_base_model(settings, output_root)
    job = build_pipeline(settings, base_model_path=base_model)
    problems = sdk_private.validation_errors(job)  # the SDK's own checks, the same as at Azure submission
    if problems:
        raise UsageError(f"pipeline failed azure-ai-ml validation:\n{problems}")
    backend = LocalBackend(output_root, PROJECT_ROOT, force_rerun=args.force_rerun, stream_logs=not args.quiet)
    result = backend.run(job, settings.experiment_name)  # a failed step raises LocalRunError (exit 1)
    print_report(result, backend.tracking_uri)
    return 0


def print_report(result, tracking_uri: str) -> None:
    """The end of a local run: the evaluation table and gate verdict, the time table, the outputs, the endpoint."""
    reused = sum(step.status == "reused" for step in result.steps)
    summary = result.outputs.get("eval_report")
    if summary and (summary / "summary.md").is_file():
        # The evaluate step's table (base vs tuned, and the champion when there is one) and the gate's verdict.
        print("\nEvaluation on the validation chats:\n")
        print(textwrap.indent((summary / "summary.md").read_text(encoding="utf-8").rstrip(), "  "))
    print(f"\nPipeline finished in {result.seconds:.1f} s ({reused}/{len(result.steps)} steps reused)")
    print(time_table(result))
    for name, path in result.outputs.items():
        print(f"  {name:<14} {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    endpoint_file = result.outputs.get("endpoint_info")
    if endpoint_file and (endpoint_file / "endpoint_info.json").is_file():
        info = json.loads((endpoint_file / "endpoint_info.json").read_text(encoding="utf-8"))
        print(f"  endpoint       {info.get('url')}")
    print(f"  MLflow         {tracking_uri}  (make mlflow-ui to browse)")


def run_azure(args: argparse.Namespace, settings: RunSettings) -> int:
    from pipelines.azure.cli import SubmitOptions
    from pipelines.azure.submit import submit

    options = SubmitOptions.from_args(args)
    return submit(settings, dry_run=args.dry_run, output_root=project_path(args.output_root), options=options)


def run_serverless(args: argparse.Namespace, settings: RunSettings) -> int:
    from dataclasses import replace

    from pipelines.azure import serverless

    settings = replace(settings, raw_data=args.data) if args.data else settings
    pricing = Path(args.pricing) if args.pricing else None
    output_root = project_path(args.output_root)
    return serverless.submit(settings, dry_run=args.dry_run, output_root=output_root, pricing=pricing)


BACKENDS = {"local": run_local, "azure": run_azure, "serverless": run_serverless}


def main(args: argparse.Namespace) -> int:
    """Load the settings and hand them to the backend; returns its exit status. Errors raise (see chatft.errors)."""
    settings = load_settings(project_path(args.config or DEFAULT_CONFIG[args.backend]), args.overrides)
    return BACKENDS[args.backend](args, settings)


if __name__ == "__main__":
    sys.exit(exit_on_error("pipelines.run", main, parse_args()))
