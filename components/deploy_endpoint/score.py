"""Scoring script for the chat endpoint: the same file serves locally and on Azure ML.

Locally ``serve_local.py`` runs it in azureml-inference-server-http; on Azure ML a managed online deployment runs
it in the same server. Either way ``init()`` loads the model once per worker from ``AZUREML_MODEL_DIR`` and
``run(raw_data)`` answers each POST /score:

    request:  {"input_data": {"input_string": [{"role": "user", "content": "Hi"}],
                              "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
    response: {"output": "Hello! How can I help?"}

``parameters`` is optional; each one's default and allowed range is in ``PARAMETERS`` below (their one home).
A bad request gets a 400 ``{"message": "..."}`` naming the problem (the server's own error shape), never a stack
trace. ``parse_request`` and ``ChatGenerator`` carry no server dependency, so the registered MLflow model
(``components/register_model/chat_pyfunc.py``) reuses them and answers exactly like the endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# A child of the server's configured "azmlinfsrv" logger, so these lines reach its log (locally and on Azure ML).
logger = logging.getLogger("azmlinfsrv.chatft")

# name: (type, default, lowest, highest). The one home of the request parameters' defaults and bounds.
PARAMETERS: dict[str, tuple[type, Any, float | None, float | None]] = {
    "temperature": (float, 0.7, 0.0, 2.0),  # 0 means greedy decoding
    "top_p": (float, 0.95, 0.01, 1.0),  # nucleus sampling mass
    "max_new_tokens": (int, 128, 1, 1024),
    "do_sample": (bool, True, None, None),  # false means greedy decoding; temperature/top_p are then ignored
}
_JSON_TYPE = {float: "a number", int: "an integer", bool: "true or false"}
_EXAMPLE = '{"input_data": {"input_string": [{"role": "user", "content": "..."}], "parameters": {...}}}'


class RequestError(ValueError):
    """The request does not follow the contract; the message says what and where (sent back with a 400)."""


def _check_parameters(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(f"input_data.parameters must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        expected = ", ".join(PARAMETERS)
        raise RequestError(f"input_data.parameters: unknown parameter(s) {', '.join(unknown)}; expected {expected}")
    params = {}
    for name, (kind, default, low, high) in PARAMETERS.items():
        value = raw.get(name, default)
        # JSON true/false must not pass for numbers (bool is an int in Python), and 1.5 is no token count.
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise RequestError(f"input_data.parameters.{name} must be {_JSON_TYPE[kind]}, got {json.dumps(value)}")
        if low is not None and not low <= value <= high:
            raise RequestError(f"input_data.parameters.{name}={value} is out of range; allowed {low}..{high}")
        params[name] = kind(value)
    return params


def _check_messages(raw: Any) -> list[dict[str, str]]:
    from chatft.chat_format import ROLES

    where = "input_data.input_string"
    if not isinstance(raw, list):
        raise RequestError(f"{where} must be a list of chat messages, got {type(raw).__name__}; e.g. {_EXAMPLE}")
    if not raw:
        raise RequestError(f"{where} is empty; send at least one user message")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise RequestError(f'{where}[{i}] must be an object with exactly "role" and "content"')
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RequestError(f"{where}[{i}].role is {json.dumps(role)}; expected {'|'.join(ROLES)}")
        if role == "system" and i != 0:
            raise RequestError(f"{where}[{i}]: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise RequestError(f"{where}[{i}].content must be a non-empty string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise RequestError(f'{where}: the last message must have role "user" (the model answers it)')
    return messages


def parse_request(raw_data: str | bytes | dict) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a request body (JSON text or an already decoded object); return (messages, parameters)."""
    if isinstance(raw_data, str | bytes):
        if not raw_data.strip():
            # Also what the server hands over when a client posts without Content-Type: application/json.
            raise RequestError(f"request body is empty; POST JSON with Content-Type: application/json: {_EXAMPLE}")
        try:
            body = json.loads(raw_data)
        except ValueError as err:
            raise RequestError(f"request body is not valid JSON ({err}); expected {_EXAMPLE}") from None
    else:
        body = raw_data
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}; expected {_EXAMPLE}")
    if "input_data" not in body:
        raise RequestError(f'request body has no "input_data"; expected {_EXAMPLE}')
    if set(body) != {"input_data"}:
        raise RequestError(f"unknown top-level key(s) {', '.join(sorted(set(body) - {'input_data'}))}")
    data = body["input_data"]
    if not isinstance(data, dict) or "input_string" not in data:
        raise RequestError(f'input_data must be an object with "input_string"; expected {_EXAMPLE}')
    unknown = sorted(set(data) - {"input_string", "parameters"})
    if unknown:
        raise RequestError(f"input_data: unknown key(s) {', '.join(unknown)}; expected input_string, parameters")
    return _check_messages(data["input_string"]), _check_parameters(data.get("parameters"))


class ChatGenerator:
    """A chat model and its tokenizer, loaded once; ``reply`` answers one conversation."""

    def __init__(self, model_path: str | os.PathLike):
        import torch

        from chatft.model_source import find_model_dir, load_causal_lm, load_tokenizer, stop_token_ids

        started = time.perf_counter()
        self.model_dir = find_model_dir(model_path)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # fp32 on CPU (bf16 is slower there without AMX); on GPU bf16 where supported, else fp16 (V100).
        dtype = "fp32" if self.device == "cpu" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        self.tokenizer = load_tokenizer(self.model_dir)
        self.model = load_causal_lm(self.model_dir, dtype=dtype).to(self.device).eval()
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        # The template's end-of-turn token (Phi-3's eos_token ends a document, not a turn) plus configured eos ids.
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        logger.info(
            "loaded %s on %s (%s) in %.1f s; stop ids %s",
            self.model_dir,
            self.device,
            dtype,
            time.perf_counter() - started,
            self.stop_ids,
        )

    def reply(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        import torch

        inputs = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        prompt_tokens = inputs["input_ids"].shape[1]
        if self.context_length and prompt_tokens + params["max_new_tokens"] > self.context_length:
            raise RequestError(
                f"the conversation is {prompt_tokens} tokens; with max_new_tokens={params['max_new_tokens']} it "
                f"exceeds the model's context of {self.context_length}; shorten the history or lower max_new_tokens"
            )
        sample = params["do_sample"] and params["temperature"] > 0
        sampling = {"do_sample": True, "temperature": params["temperature"], "top_p": params["top_p"]}
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=params["max_new_tokens"],
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **(sampling if sample else {"do_sample": False}),
            )
        return self.tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True).strip()


_generator: ChatGenerator | None = None


def init() -> None:
    global _generator
    # chatft ships beside this file (the component snapshot, or the deployment's code folder), but the server
    # puts only its app root on sys.path, which on Azure ML is the code folder's parent.
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    _generator = ChatGenerator(os.environ["AZUREML_MODEL_DIR"])


def run(raw_data: str):
    from azureml_inference_server_http.api.aml_response import AMLResponse

    try:
        messages, params = parse_request(raw_data)
        return {"output": _generator.reply(messages, params)}
    except RequestError as err:
        return AMLResponse({"message": str(err)}, 400, json_str=True)
