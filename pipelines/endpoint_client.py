"""What every `pipelines.endpoint` command shares: its error, the names the presets configure, and the two ways
of asking an endpoint (the seed's JSON shape in one piece, or chat completions streamed as server-sent events).
"""

from __future__ import annotations

import json
import sys

from chatft.errors import ChatftError
from pipelines.settings import PROJECT_ROOT, SettingsError, load_settings

REQUEST_TIMEOUT_S = 300  # a long answer on a CPU: 1024 tokens at ~18 tokens/s is ~60 s for SmolLM2
PRESETS = {"local": PROJECT_ROOT / "pipelines/config/local.yaml", "azure": PROJECT_ROOT / "pipelines/config/azure.yaml"}


class EndpointError(ChatftError, RuntimeError):
    """No usable endpoint, or it refused a request; the message says what to do."""


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
