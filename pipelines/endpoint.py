"""Use the local chat endpoint that the deploy_endpoint step (target=local) started and recorded.

    python -m pipelines.endpoint status                       # is it up, which model version, where
    python -m pipelines.endpoint ask "How do I reset my router?"
    python -m pipelines.endpoint chat                         # a conversation with history; /reset, /exit
    python -m pipelines.endpoint stop                         # stop the server, remove its record

The record is ``$CHATFT_HOME/endpoints/<name>.json`` (CHATFT_HOME defaults to outputs/ in the repo). Sampling
parameters not given here are left to the endpoint's defaults (components/deploy_endpoint/score.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from chatft.local_server import is_our_server, stop_server
from pipelines.settings import PROJECT_ROOT

REQUEST_TIMEOUT_S = 300  # a long answer on a CPU: 1024 tokens at ~18 tokens/s is ~60 s for SmolLM2


class EndpointError(RuntimeError):
    """No usable endpoint, or it refused a request; the message says what to do."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--home",
        default=os.environ.get("CHATFT_HOME", str(PROJECT_ROOT / "outputs")),
        help="local output root holding endpoints/ (default: $CHATFT_HOME, else outputs/)",
    )
    parser.add_argument("--name", help="endpoint name (default: the only endpoint recorded)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("chat", "interactive chat with history"), ("ask", "one question, print the answer")):
        command = commands.add_parser(name, help=text)
        if name == "ask":
            command.add_argument("question", help="the user message")
        command.add_argument("--system", help="a system message to start the conversation with")
        command.add_argument("--temperature", type=float, help="0 = greedy (endpoint default if omitted)")
        command.add_argument("--top_p", type=float, help="nucleus sampling mass (endpoint default if omitted)")
        command.add_argument("--max_new_tokens", type=int, help="answer length limit (endpoint default if omitted)")
    commands.add_parser("stop", help="stop the server by its recorded PID and remove the record")
    commands.add_parser("status", help="show the recorded endpoint; exit 1 unless it is healthy")
    return parser.parse_args(argv)


def find_record(home: Path, name: str | None) -> tuple[Path, dict]:
    endpoints = home / "endpoints"
    if name:
        path = endpoints / f"{name}.json"
        if not path.is_file():
            raise EndpointError(f"{path}: no such endpoint; deploy it with `make run` (deploy_endpoint target=local)")
    else:
        found = sorted(endpoints.glob("*.json"))
        if not found:
            raise EndpointError(f"no endpoint recorded in {endpoints}; deploy one with `make run` first")
        if len(found) > 1:
            raise EndpointError(f"several endpoints in {endpoints} ({', '.join(p.stem for p in found)}); pick --name")
        path = found[0]
    return path, json.loads(path.read_text(encoding="utf-8"))


def healthy(record: dict) -> bool:
    import requests

    try:
        return requests.get(record["health_url"], timeout=2).status_code == 200
    except requests.RequestException:
        return False


def generate(record: dict, messages: list[dict], parameters: dict) -> str:
    import requests

    body = {"input_data": {"input_string": messages, "parameters": parameters}}
    try:
        response = requests.post(record["url"], json=body, timeout=REQUEST_TIMEOUT_S)
    except requests.ConnectionError:
        raise EndpointError(
            f"nothing answers at {record['url']}; check `python -m pipelines.endpoint status`"
        ) from None
    try:
        reply = response.json()
    except ValueError:
        reply = {}
    if response.status_code != 200:
        raise EndpointError(f"HTTP {response.status_code}: {reply.get('message') or response.text[:300]}")
    return reply["output"]


def _parameters(args: argparse.Namespace) -> dict:
    names = ("temperature", "top_p", "max_new_tokens")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _system(args: argparse.Namespace) -> list[dict]:
    return [{"role": "system", "content": args.system}] if args.system else []


def ask(record: dict, args: argparse.Namespace) -> int:
    messages = [*_system(args), {"role": "user", "content": args.question}]
    print(generate(record, messages, _parameters(args)))
    return 0


def chat(record: dict, args: argparse.Namespace) -> int:
    print(f"Chatting with {record['model_name']}:{record['model_version']} at {record['url']}")
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
        try:
            answer = generate(record, [*history, {"role": "user", "content": text}], _parameters(args))
        except EndpointError as err:
            # The turn is dropped from the history, so the conversation stays valid for the next question.
            print(f"error: {err}", file=sys.stderr)
            continue
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
        print(f"bot> {answer}")


def stop(path: Path, record: dict) -> int:
    pid = record["pid"]
    if stop_server(pid):
        print(f"stopped {path.stem} (pid {pid})")
    else:
        print(f"{path.stem} was not running (pid {pid}); removed its record")
    path.unlink()
    return 0


def status(path: Path, record: dict) -> int:
    alive = is_our_server(record["pid"])
    up = alive and healthy(record)
    state = "healthy" if up else ("running, not answering" if alive else "not running (stale record)")
    print(f"{path.stem}: {state}")
    print(f"  url:    {record['url']}")
    print(f"  model:  {record['model_name']}:{record['model_version']} ({record['model_uri']})")
    print(f"  pid:    {record['pid']}    log: {record['log']}")
    return 0 if up else 1


def main(args: argparse.Namespace) -> int:
    path, record = find_record(Path(args.home), args.name)
    if args.command == "stop":
        return stop(path, record)
    if args.command == "status":
        return status(path, record)
    if args.command == "ask":
        return ask(record, args)
    return chat(record, args)


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except EndpointError as err:
        sys.exit(f"endpoint: {err}")
    except KeyboardInterrupt:  # Ctrl-C while waiting for an answer
        sys.exit(130)
