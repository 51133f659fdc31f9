"""Roll a registered model out to a chat endpoint that runs ``score.py``, blue/green, locally or on Azure ML.

This step picks the target from its arguments and owns the smoke test; ``chatft.deployment`` holds the rollout,
one procedure for both targets (``rollout``: keep a slot that already serves the version, else deploy the idle slot,
smoke-test it, move the traffic, retire the old slot; a failure rolls back):

target=local (``chatft.deployment.local``): one azureml-inference-server-http process per slot on a free loopback
port, and a router on ``127.0.0.1:<port>``, the endpoint's stable URL, following the traffic map
``$CHATFT_HOME/endpoints/<name>/endpoint.json``. Processes outlive this step; ``make stop`` / ``make teardown`` end
them.

target=azure (``chatft.deployment.azure``): a key-auth ``ManagedOnlineEndpoint`` and one ``ManagedOnlineDeployment``
per slot, sized by infra/compute.json (via the pipeline) and serving.json. Tested offline against a simulation of the
Azure ML REST API (tests/components/test_deploy_azure.py), never against Azure itself.

The smoke test sends real chat requests (``SMOKE_REQUESTS``): each must get HTTP 200 and a non-blank ``output``.
Writes ``endpoint_info/endpoint_info.json``: target, url, traffic, deployment_name, previous_deployment, model
name/version, reused, smoke_test_outputs (and local pids/ports).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from pathlib import Path

from chatft.deployment.azure import AzureTarget, ml_client_from_job_env
from chatft.deployment.local import LocalTarget, deploy_lock
from chatft.deployment.rollout import DeployError, Probe, roll_out
from chatft.errors import UsageError, exit_on_error

HERE = Path(__file__).resolve().parent
SPEC = HERE / "component.yml"
# Azure ML's rule for endpoint names; locally it also keeps the name safe as a folder name.
ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")

# Real chat requests in the seed's shape and with its sampling (temperature 0.7): its question, then a multi-turn
# conversation with a system message. Short, so a smoke test costs seconds.
SMOKE_REQUESTS = (
    {
        "input_data": {
            "input_string": [{"role": "user", "content": "How do I restart my router?"}],
            "parameters": {"temperature": 0.7, "max_new_tokens": 32},
        }
    },
    {
        "input_data": {
            "input_string": [
                {"role": "system", "content": "You are a helpful support assistant."},
                {"role": "user", "content": "My internet keeps dropping."},
                {"role": "assistant", "content": "Does it happen at a particular time of day?"},
                {"role": "user", "content": "Every evening. What should I check first?"},
            ],
            "parameters": {"temperature": 0.7, "max_new_tokens": 16},
        }
    },
)
# A sampled answer can be empty by chance (an end-of-turn token drawn first: ~0.2% of answers of a random tiny test
# model); a model that answers empty this many times in a row does not generate.
SMOKE_ATTEMPTS = 3


class DeploySettingsError(DeployError, UsageError):
    """The step's arguments, environment or model_info cannot work; exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from chatft.component_cli import spec_arg_parser

    return spec_arg_parser(SPEC, description=__doc__.split("\n\n")[0]).parse_args(argv)


def read_model_info(folder: str | Path) -> dict:
    path = Path(folder) / "model_info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploySettingsError(f"{path}: not found; register_model writes it") from None
    missing = [key for key in ("name", "version", "model_uri") if not info.get(key)]
    if missing:
        raise DeploySettingsError(f"{path}: missing {', '.join(missing)}")
    if info.get("quality_gate") == "failed":
        raise DeployError(
            f"{info['name']}:{info['version']} failed its quality gate ({info.get('quality_gate_reason')}) and is "
            "not deployed. The endpoint keeps what it serves."
        )
    return info


def check_reply(status: int, body: str, where: str) -> str:
    """One smoke reply: its ``output`` text (maybe blank), or a DeployError quoting what came back."""
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    if status != 200 or not isinstance(reply, dict) or not isinstance(reply.get("output"), str):
        raise DeployError(f"smoke test against {where} failed: HTTP {status}: {body[:500]}")
    return reply["output"]


def ask(probe: Probe, request: dict) -> str:
    """One smoke request through ``probe``: its ``output`` text (maybe blank)."""
    status, body, answered = probe.send(request)
    output = check_reply(status, body, probe.where)
    if probe.deployment and answered != probe.deployment:
        raise DeployError(
            f"smoke test against {probe.where}: deployment {answered!r} answered, expected {probe.deployment!r}"
        )
    return output


def smoke_test(probe: Probe) -> list[str]:
    """Every smoke request through ``probe``; each must get a non-blank answer."""
    outputs = []
    for request in SMOKE_REQUESTS:
        for _ in range(SMOKE_ATTEMPTS):
            output = ask(probe, request)
            if output.strip():
                break
        else:
            raise DeployError(
                f"smoke test against {probe.where} failed: the model answered with empty text {SMOKE_ATTEMPTS} times "
                f"in a row to {json.dumps(request['input_data']['input_string'][-1]['content'])}"
            )
        outputs.append(output)
    return outputs


def deploy_local(model_info: dict, endpoint_name: str, port: int, home: Path, force: bool = False) -> dict:
    """The rollout on this machine, one at a time per endpoint."""
    with deploy_lock(home / "endpoints" / endpoint_name / ".deploy.lock"):
        return roll_out(LocalTarget(model_info, endpoint_name, port, home, HERE), smoke_test, force)


def deploy_azure(
    ml_client,
    model_info: dict,
    endpoint_name: str,
    instance_type: str,
    instance_count: int,
    force: bool = False,
    content_safety: dict | None = None,
) -> dict:
    """The rollout on Azure ML through ``ml_client`` (an ``azure.ai.ml.MLClient``)."""
    size = (instance_type, instance_count)
    with tempfile.TemporaryDirectory(prefix="deploy_endpoint-") as tmp:
        target = AzureTarget(ml_client, model_info, endpoint_name, size, HERE, Path(tmp), content_safety)
        return roll_out(target, smoke_test, force)


def main(args: argparse.Namespace) -> dict:
    if not ENDPOINT_NAME.match(args.endpoint_name):
        raise DeploySettingsError(
            f"endpoint_name {args.endpoint_name!r} is invalid: 3-32 letters, digits or '-', starting with a letter "
            "and not ending with '-'"
        )
    model_info = read_model_info(args.model_info)
    content_safety = None
    if args.content_safety_endpoint:
        if args.target != "azure" or not args.endpoint_identity:
            raise DeploySettingsError(
                "content_safety_endpoint needs target=azure and endpoint_identity (infra output identityId: the "
                "identity holding the Content Safety role); locally, export CONTENT_SAFETY_ENDPOINT instead"
            )
        content_safety = {"endpoint": args.content_safety_endpoint, "identity": args.endpoint_identity}
    if args.target == "local":
        home = os.environ.get("CHATFT_HOME")
        if not home:
            raise DeploySettingsError(
                "CHATFT_HOME is not set: the local backend sets it to the output root (e.g. outputs/)"
            )
        info = deploy_local(model_info, args.endpoint_name, args.port, Path(home).resolve(), args.force)
    else:
        if not args.instance_type or not args.instance_count:
            raise DeploySettingsError(
                "target=azure needs instance_type and instance_count; the pipeline fills them from "
                "infra/compute.json (online_endpoint)"
            )
        info = deploy_azure(
            ml_client_from_job_env(),
            model_info,
            args.endpoint_name,
            args.instance_type,
            args.instance_count,
            args.force,
            content_safety,
        )
    info = {"target": args.target, **info}
    out = Path(args.endpoint_info)
    out.mkdir(parents=True, exist_ok=True)
    (out / "endpoint_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


if __name__ == "__main__":
    exit_on_error("deploy_endpoint", main, parse_args())
