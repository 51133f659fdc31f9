"""Scoring script for the chat endpoint: the same file serves locally and on Azure ML.

Locally ``serve_local.py`` runs it in azureml-inference-server-http; on Azure ML a managed online deployment runs
it in the same server. ``init()`` loads the model once per worker from ``AZUREML_MODEL_DIR``; ``run(request)``
answers each POST /score. This file only adapts the server to ``chatft.serving`` (shipped beside it):

    chatft/serving/contract.py     the request shapes (seed and OpenAI chat completions), parameters, 4xx errors
    chatft/serving/generation.py   the model, safe prompt tokenization, micro-batching, streaming, cancellation
    chatft/serving/settings.py     serving.json (beside this file): workers, threads, batching, limits
    chatft/serving/monitoring.py   one JSON line per request

A request goes through two steps, one function each: ``accept`` (the one place a prompt is accepted: body read,
contract checked, prompt tokenized) and ``answer`` (the one place an answer is produced: the prompt queued for a
batch). ``run`` turns the result into the response: JSON, or with ``"stream": true`` (chat completions)
server-sent ``chat.completion.chunk`` events ending with ``data: [DONE]``. A streaming client that disconnects
cancels its generation: the server's next write fails, the response generator is closed, and the row stops at its
next token.

A bad request gets a 4xx ``{"message": "..."}`` naming the problem, never a stack trace: 400 for a body that breaks
the contract (invalid JSON or UTF-8, nested too deeply, not an object, missing ``input_data``, bad roles, empty
messages, unpaired surrogates, parameters out of range or of the wrong type, unknown keys, a conversation beyond
the context), 405 for a method other than POST, 413 for a body over ``max_body_bytes``, 415 for a non-JSON
Content-Type or a charset other than UTF-8. ``run`` takes the raw request (``@rawhttp``) so that it sees the body
before anything parses it: left to the server, invalid JSON would reach a ``json.loads`` and come back as a 500.

Each 200 JSON answer carries its timing in headers: ``x-chatft-generate-ms`` (the generate() call it came from),
``x-chatft-queue-ms``, ``x-chatft-batch-size``, ``x-chatft-prompt-tokens``, ``x-chatft-completion-tokens``,
``x-chatft-finish-reason`` (``time_limit`` where ``finish_reason`` says ``length``). The local router forwards
``/v1/chat/completions`` here with the header ``x-chatft-route``; that route takes only chat completions.

On Azure ML, with the deployment's data collector on (``deploy_endpoint.py``), every request's messages and
answer go to the ``model_inputs`` / ``model_outputs`` collections (azureml-ai-monitoring's ``Collector``).
"""

# No ``from __future__ import annotations``: the server loads this file without registering it in sys.modules.
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# chatft ships beside this file (the component snapshot, the deployment's code folder), but the server puts only
# its app root on sys.path, which on Azure ML is the code folder's parent.
if (HERE / "chatft").is_dir() and str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from chatft.serving import settings as _serving_settings  # noqa: E402
from chatft.serving.contract import (  # noqa: E402,F401  (re-exported: register_model's pyfunc imports them here)
    CHAT_COMPLETIONS,
    CHAT_ROUTE,
    EXAMPLE,
    PARAMETERS,
    ROUTE_HEADER,
    SCORE_ROUTE,
    SEED,
    ChatRequest,
    RequestError,
    default_parameters,
    parse_any,
    parse_request,
)
from chatft.serving.generation import ChatGenerator, Completion, Job, MicroBatcher  # noqa: E402,F401
from chatft.serving.monitoring import RequestLog  # noqa: E402

try:
    from azureml_inference_server_http.api.aml_request import rawhttp
except ImportError:  # the MLflow pyfunc imports this file for parse_request/ChatGenerator, without the server

    def rawhttp(func):
        return func


logger = logging.getLogger("azmlinfsrv.chatft")
SERVING_FILE = HERE / "serving.json"

_settings: dict = {}
_generator: ChatGenerator | None = None
_batcher: MicroBatcher | None = None
_log: RequestLog | None = None
_collectors: tuple | None = None


def load_serving_settings(path: str | os.PathLike = SERVING_FILE) -> dict:
    return _serving_settings.load_serving_settings(path)


def _data_collectors() -> tuple | None:
    """(model_inputs, model_outputs) collectors where Azure ML's data collector is configured, else None."""
    if not (os.environ.get("AZUREML_MDC_CONFIG_PATH") or os.environ.get("AZUREML_MDC_ENABLED", "").lower() == "true"):
        return None
    from azureml.ai.monitoring import Collector

    def on_error(err):  # the collector must never fail a request
        logger.warning("data collector: %s", err)

    return Collector(name="model_inputs", on_error=on_error), Collector(name="model_outputs", on_error=on_error)


def init() -> None:
    global _settings, _generator, _batcher, _log, _collectors
    _settings = load_serving_settings()
    _generator = ChatGenerator(os.environ["AZUREML_MODEL_DIR"], max_time_s=_settings["generation_timeout_s"])
    _generator.reply([{"role": "user", "content": "Hi"}], {**default_parameters(), "max_new_tokens": 1})  # warm-up
    _batcher = MicroBatcher(_generator, _settings["max_batch_size"], _settings["batch_wait_ms"])
    _log = RequestLog()
    _collectors = _data_collectors()


# ---- a request, step by step ---------------------------------------------------------------------------------------


def _route(request) -> str:
    return CHAT_ROUTE if request.headers.get(ROUTE_HEADER) == CHAT_ROUTE else SCORE_ROUTE


def _read_body(request, limit: int) -> str:
    """The body as text, refused before it is read when over ``limit`` bytes or not JSON."""
    if request.method != "POST":
        raise RequestError(f"{request.method} is not supported on /score; POST a JSON body ({EXAMPLE})", 405)
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(f"request body is {request.content_length} bytes; the limit is {limit}", 413)
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise RequestError(f"Content-Type is {mimetype}; send Content-Type: application/json", 415)
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise RequestError(f"Content-Type charset is {charset}; send JSON as UTF-8 (charset=utf-8)", 415)
    data = request.stream.read(limit + 1)  # a chunked body has no Content-Length: never read past the limit
    if len(data) > limit:
        raise RequestError(f"request body is over the limit of {limit} bytes", 413)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not UTF-8 ({err})") from None


def accept(request) -> tuple[ChatRequest, list[int]]:
    """The one place a prompt is accepted: the body read, the contract checked, the prompt tokenized.

    Raises RequestError (a 4xx). A screening hook refusing the prompt raises one with ``category`` set.
    """
    chat = parse_any(_read_body(request, _settings["max_body_bytes"]), route=_route(request))
    return chat, _generator.encode(chat.messages, chat.params)


def answer(chat: ChatRequest, prompt: list[int]) -> Job:
    """The one place an answer is produced: the prompt joins a batch; the job streams it and ends with it."""
    return _batcher.start(prompt, chat.params, stream=chat.stream)


def _collect(chat: ChatRequest, completion: Completion) -> None:
    if _collectors is None:
        return
    import pandas as pd

    inputs, outputs = _collectors
    context = inputs.collect(pd.DataFrame([{"messages": json.dumps(chat.messages), **chat.params}]))
    row = {"output": completion.text, "finish_reason": completion.finish_reason}
    row.update({"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens})
    outputs.collect(pd.DataFrame([row]), context)


# ---- responses -----------------------------------------------------------------------------------------------------


def _finish_reason(completion: Completion) -> str:
    # OpenAI's finish reasons know no time limit: a cut answer is "length" either way.
    return "stop" if completion.finish_reason in ("stop", "cancelled") else "length"


def _usage(completion: Completion) -> dict:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def _chat_completion(completion: Completion, model: str | None) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or _generator.model_dir.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": _finish_reason(completion),
            }
        ],
        "usage": _usage(completion),
    }


def _event_stream(chat: ChatRequest, job: Job, started: float):
    """Server-sent events in OpenAI's chunk shape; closing this generator (the client left) cancels the job."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": chat.model or _generator.model_dir.name,
    }

    def event(delta: dict, finish_reason: str | None = None, **extra) -> str:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    completion, status = None, 200
    try:
        yield event({"role": "assistant", "content": ""})
        for piece in job.deltas():
            yield event({"content": piece})
        completion = job.wait()
        yield event({}, _finish_reason(completion))
        if chat.include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': _usage(completion)})}\n\n"
        yield "data: [DONE]\n\n"
    except GeneratorExit:  # the server closes us when a write to the client fails
        job.cancel()
        completion = job.wait() if job.done.wait(timeout=5) else None
        status = 499  # nginx's "client closed request": not an answer, not a server error
        raise
    except Exception as err:  # generation failed mid-stream: an error event (status 200 is already sent)
        status = 500
        logger.exception("streaming generation failed")
        yield f"data: {json.dumps({'error': {'message': f'generation failed: {type(err).__name__}'}})}\n\n"
    finally:
        record = {"completion": completion, "stream": True, "messages": chat.messages}
        _log.record(route=chat.route, status=status, started=started, **record)
        if completion is not None and status == 200:
            _collect(chat, completion)


@rawhttp
def run(request):
    """Answer one POST /score (a flask request, as ``@rawhttp`` passes it)."""
    from azureml_inference_server_http.api.aml_response import AMLResponse
    from flask import Response

    started, route = time.perf_counter(), _route(request)
    try:
        chat, prompt = accept(request)
    except RequestError as err:
        _log.record(route=route, status=err.status, started=started, blocked=err.category, error=str(err)[:300])
        return AMLResponse({"message": str(err)}, err.status, json_str=True)
    job = answer(chat, prompt)
    if chat.stream:
        # No buffering on the way (X-Accel-Buffering: proxies); the body is sent chunked as events come.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(_event_stream(chat, job, started), mimetype="text/event-stream", headers=headers)
    try:
        completion = job.wait()
    except Exception:
        _log.record(route=route, status=500, started=started)
        raise
    _log.record(route=route, status=200, started=started, completion=completion, messages=chat.messages)
    _collect(chat, completion)
    body = {"output": completion.text} if chat.shape == SEED else _chat_completion(completion, chat.model)
    headers = {
        "x-chatft-generate-ms": f"{completion.generate_ms:.1f}",
        "x-chatft-queue-ms": f"{completion.queue_ms:.1f}",
        "x-chatft-batch-size": str(completion.batch_size),
        "x-chatft-prompt-tokens": str(completion.prompt_tokens),
        "x-chatft-completion-tokens": str(completion.completion_tokens),
        "x-chatft-finish-reason": completion.finish_reason,
    }
    return AMLResponse(body, 200, headers, json_str=True)
