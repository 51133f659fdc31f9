"""Talk to the chat endpoint, check it, stop it or tear it down: the local one (default) or the Azure ML one.

    python -m pipelines.endpoint status                       # router, slots, traffic; exit 1 unless healthy
    python -m pipelines.endpoint ask "How do I reset my router?"
    python -m pipelines.endpoint chat                         # a conversation with history; /reset, /exit
    python -m pipelines.endpoint chat --no-stream             # ... each answer shown once it is complete
    python -m pipelines.endpoint monitor --last 200           # local: latency, tokens/s, error and block rates
    python -m pipelines.endpoint stop                         # local: stop the router and every slot
    python -m pipelines.endpoint teardown [--delete-model]    # delete the endpoint (the model stays unless asked)
    python -m pipelines.endpoint --target azure chat          # the same against the Azure ML endpoint
    python -m pipelines.endpoint --target serverless chat     # the serverless endpoint of pipelines/azure/serverless/

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
import os
import sys
from pathlib import Path

from chatft.errors import exit_on_error
from pipelines.endpoint_azure import (
    KEY_ENV,  # noqa: F401  (named here by the tests and the docs)
    URL_ENV,  # noqa: F401
    azure_connection,
    azure_name,
    manage_azure,
    manage_serverless,
    serverless_connection,
    serverless_name,
)
from pipelines.endpoint_client import EndpointError, generate, stream_reply
from pipelines.endpoint_local import find_record, local_connection, manage_local
from pipelines.settings import PROJECT_ROOT

TARGETS = ["local", "azure", "serverless"]


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


def connect(args: argparse.Namespace, ml_client=None) -> dict:
    """The endpoint ``ask`` and ``chat`` talk to: url, headers (the key), a label."""
    if args.target == "serverless":
        return serverless_connection(serverless_name(args), ml_client)
    if args.target == "azure":
        return azure_connection(azure_name(args), ml_client)
    return local_connection(find_record(Path(args.home), args.name)[1])


def main(args: argparse.Namespace, ml_client=None) -> int:
    if args.command == "ask":
        return ask(connect(args, ml_client), args)
    if args.command == "chat":
        return chat(connect(args, ml_client), args)
    if args.target == "serverless":
        return manage_serverless(args, ml_client)
    if args.target == "azure":
        return manage_azure(args, ml_client)
    return manage_local(args, Path(args.home))


if __name__ == "__main__":
    try:
        sys.exit(exit_on_error("endpoint", main, parse_args()))
    except KeyboardInterrupt:  # Ctrl-C while waiting for an answer
        sys.exit(130)
