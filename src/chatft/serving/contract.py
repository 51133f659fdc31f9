"""The endpoint's request contract: two request shapes, every parameter's default and range, clear 4xx errors.

The seed's shape::

    request:  {"input_data": {"input_string": [{"role": "user", "content": "Hi"}],
                              "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
    response: {"output": "Hello! How can I help?"}

The OpenAI chat-completions shape, told apart by ``messages`` (on ``/score``), the only shape on
``/v1/chat/completions``::

    request:  {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "max_tokens": 128,
               "stream": false}
    response: {"id": "chatcmpl-...", "object": "chat.completion", "created": 1700000000, "model": "...",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}}

With ``"stream": true`` the answer is server-sent events of ``chat.completion.chunk`` objects ending with
``data: [DONE]`` (``stream_options: {"include_usage": true}`` adds a last chunk with ``usage``).

Parameters (seed: in ``input_data.parameters``; chat completions: top level); ``PARAMETERS`` is their one home:

    temperature     0.0..2.0, default 0.7; 0 means greedy decoding
    top_p           0.01..1.0, default 0.95
    max_new_tokens  1..1024, default 128 (chat completions: ``max_tokens`` or ``max_completion_tokens``)
    do_sample       true|false, default true; false means greedy decoding (seed shape only)

Chat completions also accept ``model`` (echoed back), ``stream``, ``stream_options`` and ``n: 1``; anything else
unknown is refused. A bad request raises ``RequestError`` with a message naming what and where; values quoted in
a message are cut short, so a message never echoes a large body back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from chatft.errors import UsageError

# name: (type, default, lowest, highest). The one home of the request parameters' defaults and bounds.
PARAMETERS: dict[str, tuple[type, Any, float | None, float | None]] = {
    "temperature": (float, 0.7, 0.0, 2.0),  # 0 means greedy decoding
    "top_p": (float, 0.95, 0.01, 1.0),  # nucleus sampling mass
    "max_new_tokens": (int, 128, 1, 1024),
    "do_sample": (bool, True, None, None),  # false means greedy decoding; temperature/top_p are then ignored
}
# Chat-completions name -> PARAMETERS name. do_sample has no OpenAI counterpart: temperature 0 is greedy there.
CHAT_COMPLETION_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_new_tokens",
    "max_completion_tokens": "max_new_tokens",
}
_JSON_TYPE = {float: "a number", int: "an integer", bool: "true or false"}
EXAMPLE = '{"input_data": {"input_string": [{"role": "user", "content": "..."}], "parameters": {...}}}'
CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}], "max_tokens": 128}'
SEED, CHAT_COMPLETIONS = "seed", "chat_completions"
SCORE_ROUTE, CHAT_ROUTE = "/score", "/v1/chat/completions"
# The local router forwards /v1/chat/completions to a slot's /score (the server's one route) with this header.
ROUTE_HEADER = "x-chatft-route"
_QUOTE_CHARS = 80  # how much of a bad value an error message quotes


class RequestError(UsageError, ValueError):
    """The request does not follow the contract; the message says what and where (sent back with ``status``).

    ``category`` is set when a request is refused for its content (a screening hook's verdict); monitoring counts
    those as blocked rather than as errors.
    """

    def __init__(self, message: str, status: int = 400, category: str | None = None):
        super().__init__(message)
        self.status = status
        self.category = category


@dataclass
class ChatRequest:
    """One validated request: what the model is asked and how the answer goes back."""

    shape: str  # SEED | CHAT_COMPLETIONS
    messages: list[dict[str, str]]
    params: dict[str, Any]
    model: str | None = None  # chat completions: echoed back
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage
    route: str = SCORE_ROUTE
    extra: dict[str, Any] = field(default_factory=dict)  # room for hooks (e.g. a screening verdict)


def default_parameters() -> dict[str, Any]:
    return {name: default for name, (_, default, _, _) in PARAMETERS.items()}


def _quote(value: Any) -> str:
    """``value`` as JSON for an error message, cut to a few dozen characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= _QUOTE_CHARS else f"{text[:_QUOTE_CHARS]}... ({len(text)} characters)"


def _check_parameters(raw: Any, where: str, names: dict[str, str]) -> dict[str, Any]:
    """Validate ``raw`` (request name -> value) against PARAMETERS; ``names`` maps request names to PARAMETERS."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(f"{where} must be an object, got {type(raw).__name__}")
    prefix = f"{where}." if where else ""  # chat-completions parameters sit at the top level
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise RequestError(f"{where or 'request'}: unknown parameter(s) {_names(unknown)}; expected {', '.join(names)}")
    given: dict[str, tuple[str, Any]] = {}
    for name, value in raw.items():
        if names[name] in given:
            raise RequestError(f"give one of {prefix}{given[names[name]][0]} and {prefix}{name}, not both")
        given[names[name]] = (name, value)
    params = {}
    for target, (kind, default, low, high) in PARAMETERS.items():
        name, value = given.get(target, (target, default))
        # JSON true/false must not pass for numbers (bool is an int in Python), and 1.5 is no token count.
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise RequestError(f"{prefix}{name} must be {_JSON_TYPE[kind]}, got {_quote(value)}")
        # NaN fails every comparison, so it lands here too (Python's json reads NaN and Infinity).
        if low is not None and not low <= value <= high:
            raise RequestError(f"{prefix}{name}={_quote(value)} is out of range; allowed {low}..{high}")
        params[target] = kind(value)
    return params


def _names(keys: list[str]) -> str:
    return ", ".join(_quote(key)[1:-1] if len(key) <= _QUOTE_CHARS else _quote(key) for key in keys)


def _check_text(value: str, where: str) -> None:
    """Text the tokenizer can take: JSON's ``\\ud800``-style escapes can produce unpaired surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(
            f"{where} holds an unpaired UTF-16 surrogate ({_quote(value[err.start])}) at character {err.start}; "
            "send valid Unicode"
        ) from None


def _check_messages(raw: Any, where: str, example: str) -> list[dict[str, str]]:
    from chatft.chat_format import ROLES

    if not isinstance(raw, list):
        raise RequestError(f"{where} must be a list of chat messages, got {type(raw).__name__}; e.g. {example}")
    if not raw:
        raise RequestError(f"{where} is empty; send at least one user message")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise RequestError(f'{where}[{i}] must be an object with exactly "role" and "content"')
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RequestError(f"{where}[{i}].role is {_quote(role)}; expected {'|'.join(ROLES)}")
        if role == "system" and i != 0:
            raise RequestError(f"{where}[{i}]: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise RequestError(f"{where}[{i}].content must be a non-empty string")
        _check_text(content, f"{where}[{i}].content")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise RequestError(f'{where}: the last message must have role "user" (the model answers it)')
    return messages


def decode_body(raw_data: str | bytes | dict) -> dict:
    """The request body as a JSON object (JSON text is decoded; a dict passes through)."""
    if isinstance(raw_data, str | bytes):
        if not raw_data.strip():
            raise RequestError(f"request body is empty; POST JSON with Content-Type: application/json: {EXAMPLE}")
        try:
            body = json.loads(raw_data)
        except RecursionError:  # json's C scanner recurses once per level: deep nesting ends here, not in a 500
            raise RequestError("request body is nested too deeply; a chat request is at most 4 levels deep") from None
        except ValueError as err:  # also UnicodeDecodeError (bytes) and integers beyond 4300 digits
            raise RequestError(f"request body is not valid JSON ({str(err)[:200]}); expected {EXAMPLE}") from None
    else:
        body = raw_data
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}; expected {EXAMPLE}")
    return body


def parse_request(raw_data: str | bytes | dict) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a request in the seed's shape (JSON text or a decoded object); return (messages, parameters)."""
    body = decode_body(raw_data)
    if "input_data" not in body:
        raise RequestError(
            f'request body has no "input_data"; expected {EXAMPLE} (or "messages" for chat completions: {CHAT_EXAMPLE})'
        )
    if set(body) != {"input_data"}:
        raise RequestError(f"unknown top-level key(s) {_names(sorted(set(body) - {'input_data'}))}")
    data = body["input_data"]
    if not isinstance(data, dict) or "input_string" not in data:
        raise RequestError(f'input_data must be an object with "input_string"; expected {EXAMPLE}')
    unknown = sorted(set(data) - {"input_string", "parameters"})
    if unknown:
        raise RequestError(f"input_data: unknown key(s) {_names(unknown)}; expected input_string, parameters")
    messages = _check_messages(data["input_string"], "input_data.input_string", EXAMPLE)
    params = _check_parameters(data.get("parameters"), "input_data.parameters", {name: name for name in PARAMETERS})
    return messages, params


def parse_chat_completion(body: dict, route: str = SCORE_ROUTE) -> ChatRequest:
    """Validate a decoded chat-completions request."""
    if "messages" not in body:
        raise RequestError(f'{route} takes the chat-completions shape: the body has no "messages"; e.g. {CHAT_EXAMPLE}')
    if "input_data" in body:
        raise RequestError('request body has both "messages" and "input_data"; send one shape')
    accepted = ("model", "stream", "stream_options", "n")  # what OpenAI clients send besides the parameters
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model must be a string, got {_quote(model)}")
    if model is not None:
        _check_text(model, "model")
    stream = body.get("stream", False)
    if stream is None:  # what an OpenAI client sends for "not given"
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {_quote(stream)}")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise RequestError("stream_options is only allowed with stream=true")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise RequestError(f'stream_options must be {{"include_usage": true|false}}, got {_quote(options)}')
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise RequestError(f"stream_options.include_usage must be true or false, got {_quote(include_usage)}")
    if "n" in body and (body["n"] != 1 or isinstance(body["n"], bool)):
        raise RequestError(f"n={_quote(body['n'])} is not supported; only 1")
    rest = {key: value for key, value in body.items() if key not in (*accepted, "messages")}
    unknown = sorted(set(rest) - set(CHAT_COMPLETION_PARAMETERS))
    if unknown:
        expected = ", ".join(["messages", *CHAT_COMPLETION_PARAMETERS, *accepted])
        raise RequestError(f"unknown key(s) {_names(unknown)}; expected {expected}")
    messages = _check_messages(body["messages"], "messages", CHAT_EXAMPLE)
    params = _check_parameters(rest, "", CHAT_COMPLETION_PARAMETERS)
    return ChatRequest(CHAT_COMPLETIONS, messages, params, model, stream, include_usage, route)


def parse_any(raw_data: str | bytes | dict, route: str = SCORE_ROUTE) -> ChatRequest:
    """Validate a request in either shape (``/v1/chat/completions`` takes only the chat-completions one)."""
    body = decode_body(raw_data)
    if route == CHAT_ROUTE or "messages" in body:
        return parse_chat_completion(body, route)
    messages, params = parse_request(body)
    return ChatRequest(SEED, messages, params, route=route)
