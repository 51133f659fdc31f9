"""Talk to the chat endpoint, check it, stop it or tear it down: the local one (default) or the Azure ML one.

    python -m pipelines.endpoint status                       # router, slots, traffic; exit 1 unless healthy
    python -m pipelines.endpoint ask "How do I reset my router?"
    python -m pipelines.endpoint chat                         # a conversation with history; /reset, /exit
    python -m pipelines.endpoint chat --no-stream             # ... each answer shown once it is complete
    python -m pipelines.endpoint monitor --last 200           # local: latency, tokens/s, error and block rates
    python -m pipelines.endpoint stop                         # local: stop the router and every slot
    python -m pipelines.endpoint teardown [--delete-model]    # delete the endpoint (the model stays unless asked)
    python -m pipelines.endpoint --target azure chat          # the same against the Azure ML endpoint
    python -m pipelines.endpoint --target serverless chat     # the serverless endpoint of pipelines/azure/serverless.py

Local: deploy_endpoint records the endpoint in ``$CHATFT_HOME/endpoints/<name>/endpoint.json`` (CHATFT_HOME
defaults to outputs/); requests go to its stable URL, the router, which follows the traffic map through every
blue/green swap. Azure: the endpoint named by ``--name``, else by ``steps.deploy_endpoint.endpoint_name`` in
pipelines/config/azure.yaml. Its URL and key come from CHATFT_ENDPOINT_URL and CHATFT_ENDPOINT_KEY when both are set,
else from the workspace (as ``make submit`` finds it); the key is sent as a bearer token and never printed.
Sampling parameters not given here are left to the endpoint's defaults (components/deploy_endpoint/score.py).
``chat`` streams each answer as the model writes it (chat-completions shape with ``"stream": true`` on the same
URL, so it works locally and on Azure). ``monitor`` (and ``status``) summarise each local slot's request log
(``<slot>/requests.jsonl``, written by score.py, see ``chatft.serving.monitoring``); on Azure ML the same records
go to Application Insights and the data collector.
Serverless: the endpoint named by ``serverless.endpoint_name`` in pipelines/config/serverless.yaml, spoken to in the
OpenAI chat-completions shape at ``<scoring uri>/v1/chat/completions``; URL and key from CHATFT_SERVERLESS_URL and
CHATFT_SERVERLESS_KEY, else from the workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from chatft.errors import ChatftError
from chatft.local_server import MAP_FILE, is_our_server, live_deployment, stop_server
from pipelines.settings import PROJECT_ROOT, SettingsError, load_settings

REQUEST_TIMEOUT_S = 300  # a long answer on a CPU: 1024 tokens at ~18 tokens/s is ~60 s for SmolLM2
URL_ENV, KEY_ENV = "CHATFT_ENDPOINT_URL", "CHATFT_ENDPOINT_KEY"
PRESETS = {"local": PROJECT_ROOT / "pipelines/config/local.yaml", "azure": PROJECT_ROOT / "pipelines/config/azure.yaml"}
TARGETS = ["local", "azure", "serverless"]


class EndpointError(ChatftError, RuntimeError):
    """No usable endpoint, or it refused a request; the message says what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--home",
        default=os.environ.get("CHATFT_HOME", str(PROJECT_ROOT / "outputs")),
        help="local output root holding endpoints/ (default: $CHATFT_HOME, else outputs/)",
    )
    parser.add_argument("--target", choices=TARGETS, default="local", help="which endpoint")
    parser.add_argument("--name", help="endpoint name (local default: the only one recorded; azure: the preset's)")
    # The same two options after the command too (`teardown --name x`), without overriding them when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", choices=TARGETS, default=argparse.SUPPRESS, help="which endpoint")
    common.add_argument("--name", default=argparse.SUPPRESS, help="endpoint name")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("chat", "interactive chat with history"), ("ask", "one question, print the answer")):
        command = commands.add_parser(name, help=text, parents=[common])
        if name == "ask":
            command.add_argument("question", help="the user message")
        command.add_argument("--system", help="a system message to start the conversation with")
        command.add_argument("--temperature", type=float, help="0 = greedy (endpoint default if omitted)")
        command.add_argument("--top_p", type=float, help="nucleus sampling mass (endpoint default if omitted)")
        command.add_argument("--max_new_tokens", type=int, help="answer length limit (endpoint default if omitted)")
        if name == "chat":
            command.add_argument("--no-stream", action="store_true", help="show each answer only once complete")
    status = commands.add_parser(
        "status", help="show the endpoint, its deployments and traffic; exit 1 unless healthy", parents=[common]
    )
    monitor = commands.add_parser(
        "monitor",
        help="local: summarise the last requests per deployment (latency, tokens/s, errors)",
        parents=[common],
    )
    for command in (status, monitor):
        command.add_argument("--last", type=int, default=200, help="how many recent requests to summarise per slot")
    commands.add_parser(
        "stop", help="local: stop the router and every deployment slot, forget the traffic map", parents=[common]
    )
    teardown = commands.add_parser(
        "teardown", help="delete the endpoint and its deployments; the model stays", parents=[common]
    )
    teardown.add_argument("--delete-model", action="store_true", help="also delete the registered model")
    teardown.add_argument(
        "--delete-subscription", action="store_true", help="serverless: also the marketplace subscription"
    )
    return parser.parse_args(argv)


def configured(step: str, key: str, target: str) -> str:
    """A step input as the target's preset sets it, else the component's default: the pipeline's own value."""
    try:
        value = load_settings(PRESETS[target]).step(step).get(key)
    except SettingsError:
        value = None
    if value is None:
        from chatft.component_cli import load_spec

        value = load_spec(PROJECT_ROOT / "components" / step / "component.yml")["inputs"][key].get("default")
    return str(value)


# ---- local -------------------------------------------------------------------------------------------------------


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


# ---- azure -------------------------------------------------------------------------------------------------------


def azure_client(ml_client=None):
    if ml_client is not None:
        return ml_client
    from pipelines.azure.client import WorkspaceConfigError, workspace_client

    try:
        return workspace_client()
    except WorkspaceConfigError as err:
        raise EndpointError(str(err)) from None


def azure_connection(name: str, ml_client=None) -> dict:
    url, key = os.environ.get(URL_ENV), os.environ.get(KEY_ENV)
    if bool(url) != bool(key):
        missing = KEY_ENV if url else URL_ENV
        raise EndpointError(f"{missing} is not set: set both {URL_ENV} and {KEY_ENV}, or neither to ask the workspace")
    if not url:
        client = azure_client(ml_client)
        url = client.online_endpoints.get(name).scoring_uri
        key = client.online_endpoints.get_keys(name).primary_key
    return {"url": url, "headers": {"Authorization": f"Bearer {key}"}, "label": f"{name} (Azure ML)"}


def _state(value) -> str:
    return str(getattr(value, "value", value))


def status_azure(name: str, ml_client=None) -> int:
    client = azure_client(ml_client)
    endpoint = client.online_endpoints.get(name)
    # The SDK reports states as enums (EndpointProvisioningState.SUCCEEDED in an f-string): print their value.
    print(f"{name}: {endpoint.scoring_uri}  ({_state(endpoint.provisioning_state)})")
    for deployment in client.online_deployments.list(endpoint_name=name):
        share = (endpoint.traffic or {}).get(deployment.name, 0)
        model = (deployment.tags or {}).get("model", deployment.model)
        print(f"  {deployment.name:<6} {share:>3}%  {model}  {_state(deployment.provisioning_state)}")
    return (
        0
        if _state(endpoint.provisioning_state) == "Succeeded" and live_deployment({"traffic": endpoint.traffic})
        else 1
    )


def teardown_azure(name: str, delete_model: bool, ml_client=None) -> int:
    client = azure_client(ml_client)
    models = {
        (deployment.tags or {}).get("model", "").split(":")[0]
        for deployment in client.online_deployments.list(endpoint_name=name)
    } - {""}
    print(f"deleting the Azure ML endpoint {name} and its deployments ...", flush=True)
    client.online_endpoints.begin_delete(name=name).result()
    print(f"deleted {name}")
    if delete_model:
        # azure-ai-ml has no hard delete for model versions; archived ones are hidden and can be restored.
        for model in sorted(models or {configured("register_model", "model_name", "azure")}):
            for version in client.models.list(name=model):
                client.models.archive(name=model, version=version.version)
            print(f"archived every version of the registered model {model}")
    else:
        print("the registered model stays (--delete-model / DELETE_MODEL=1 archives it)")
    return 0


# ---- serverless (pipelines/azure/serverless.py) -----------------------------------------------------------------
SERVERLESS_URL_ENV, SERVERLESS_KEY_ENV = "CHATFT_SERVERLESS_URL", "CHATFT_SERVERLESS_KEY"


def serverless_preset():
    from pipelines.azure.serverless import SERVERLESS_PRESET, serverless_settings

    settings = load_settings(PROJECT_ROOT / SERVERLESS_PRESET)
    return settings, serverless_settings(settings)


def serverless_connection(name: str, ml_client=None) -> dict:
    url, key = os.environ.get(SERVERLESS_URL_ENV), os.environ.get(SERVERLESS_KEY_ENV)
    if bool(url) != bool(key):
        missing = SERVERLESS_KEY_ENV if url else SERVERLESS_URL_ENV
        raise EndpointError(f"{missing} is not set: set both, or neither to ask the workspace")
    if not url:
        client = azure_client(ml_client)
        url = client.serverless_endpoints.get(name).scoring_uri
        key = client.serverless_endpoints.get_keys(name).primary_key
    return {"url": url, "headers": {"Authorization": f"Bearer {key}"}, "label": f"{name} (serverless)", "api": "openai"}


def generate_openai(connection: dict, messages: list[dict], parameters: dict) -> str:
    """The OpenAI chat-completions shape serverless endpoints take; max_new_tokens is their max_tokens."""
    from pipelines.azure.serverless import ServerlessError, chat_completions

    body = {"messages": messages, **{k: v for k, v in parameters.items() if k != "max_new_tokens"}}
    if "max_new_tokens" in parameters:
        body["max_tokens"] = parameters["max_new_tokens"]
    key = connection["headers"]["Authorization"].removeprefix("Bearer ")
    try:
        return chat_completions(connection["url"], key, body, timeout=REQUEST_TIMEOUT_S)["choices"][0]["message"][
            "content"
        ]
    except ServerlessError as err:
        raise EndpointError(str(err)) from None


def status_serverless(name: str, ml_client=None) -> int:
    endpoint = azure_client(ml_client).serverless_endpoints.get(name)
    print(f"{name}: {endpoint.scoring_uri}  ({endpoint.provisioning_state}, model {endpoint.model_id})")
    return 0 if (endpoint.provisioning_state or "").lower() == "succeeded" else 1


def main_serverless(args: argparse.Namespace, ml_client=None) -> int:
    from pipelines.azure.serverless import teardown

    settings, options = serverless_preset()
    name = args.name or options.endpoint_name
    if args.command == "stop":
        raise EndpointError("stop is local only; `teardown --target serverless` deletes the serverless endpoint")
    if args.command == "teardown":
        return teardown(settings, args.delete_subscription, azure_client(ml_client), name=name)
    if args.command == "status":
        return status_serverless(name, ml_client)
    connection = serverless_connection(name, ml_client)
    return ask(connection, args) if args.command == "ask" else chat(connection, args)


# ---- talking to either -------------------------------------------------------------------------------------------


def _refusal(response) -> EndpointError:
    try:
        reply = response.json()
    except ValueError:
        reply = {}
    detail = reply.get("message") if isinstance(reply, dict) else None
    return EndpointError(f"HTTP {response.status_code}: {detail or response.text[:300]}")


def stream_reply(connection: dict, messages: list[dict], parameters: dict, out=None) -> str:
    """Ask in the chat-completions shape with ``stream: true``; print each piece as it comes; return the answer."""
    import requests

    out = out or sys.stdout
    body = {"messages": messages, "stream": True}
    names = {"temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_tokens"}
    body.update({names[name]: value for name, value in parameters.items()})
    try:
        response = requests.post(
            connection["url"], json=body, headers=connection["headers"], timeout=REQUEST_TIMEOUT_S, stream=True
        )
    except requests.ConnectionError:
        raise EndpointError(f"nothing answers at {connection['url']}; check `make status`") from None
    with response:
        if response.status_code != 200:
            raise _refusal(response)
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            # An endpoint that answers in one piece (an older score.py): show the whole answer.
            reply = response.json()
            answer = reply["output"] if "output" in reply else reply["choices"][0]["message"]["content"]
            out.write(answer)
            return answer
        pieces = []
        for line in response.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise EndpointError(f"the answer broke off: {event['error'].get('message')}")
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    pieces.append(piece)
                    out.write(piece)
                    out.flush()
    return "".join(pieces).strip()


def generate(connection: dict, messages: list[dict], parameters: dict) -> str:
    import requests

    if connection.get("api") == "openai":  # a serverless endpoint
        return generate_openai(connection, messages, parameters)

    body = {"input_data": {"input_string": messages, "parameters": parameters}}
    try:
        response = requests.post(connection["url"], json=body, headers=connection["headers"], timeout=REQUEST_TIMEOUT_S)
    except requests.ConnectionError:
        raise EndpointError(f"nothing answers at {connection['url']}; check `make status`") from None
    try:
        reply = response.json()
    except ValueError:
        reply = {}
    if response.status_code != 200:
        raise _refusal(response)
    return reply["output"]


def _parameters(args: argparse.Namespace) -> dict:
    names = ("temperature", "top_p", "max_new_tokens")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _system(args: argparse.Namespace) -> list[dict]:
    return [{"role": "system", "content": args.system}] if args.system else []


def ask(connection: dict, args: argparse.Namespace) -> int:
    messages = [*_system(args), {"role": "user", "content": args.question}]
    print(generate(connection, messages, _parameters(args)))
    return 0


def chat(connection: dict, args: argparse.Namespace) -> int:
    print(f"Chatting with {connection['label']} at {connection['url']}")
    print("/reset starts over, /exit (or Ctrl-D) quits.")
    history = _system(args)
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text == "/exit":
            return 0
        if text == "/reset":
            history = _system(args)
            print("(conversation cleared)")
            continue
        if not text:
            continue
        asked = [*history, {"role": "user", "content": text}]
        try:
            if args.no_stream:
                answer = generate(connection, asked, _parameters(args))
                print(f"bot> {answer}")
            else:
                print("bot> ", end="", flush=True)
                answer = stream_reply(connection, asked, _parameters(args))
                print()
        except EndpointError as err:
            # The turn is dropped from the history, so the conversation stays valid for the next question.
            print(f"\nerror: {err}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def main(args: argparse.Namespace, ml_client=None) -> int:
    if args.target == "serverless":
        return main_serverless(args, ml_client)
    if args.target == "azure":
        name = args.name or configured("deploy_endpoint", "endpoint_name", "azure")
        if args.command == "stop":
            raise EndpointError("stop is local only; `teardown --target azure` deletes the Azure endpoint")
        if args.command == "teardown":
            return teardown_azure(name, args.delete_model, ml_client)
        if args.command == "status":
            return status_azure(name, ml_client)
        if args.command == "monitor":
            raise EndpointError(
                "monitor is local only; on Azure ML the request records are in Application Insights and the "
                "model inputs/outputs in the data collector's storage"
            )
        connection = azure_connection(name, ml_client)
    else:
        home = Path(args.home)
        if args.command == "teardown":
            return teardown_local(home, args.name, args.delete_model)
        path, record = find_record(home, args.name)
        if args.command == "stop":
            return stop(path, record)
        if args.command == "status":
            return status_local(path, record, args.last)
        if args.command == "monitor":
            print(f"{record['endpoint_name']}: {record['url']}")
            return monitor_local(path, record, args.last)
        connection = local_connection(record)
    return ask(connection, args) if args.command == "ask" else chat(connection, args)


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except EndpointError as err:
        sys.exit(f"endpoint: {err}")
    except KeyboardInterrupt:  # Ctrl-C while waiting for an answer
        sys.exit(130)
