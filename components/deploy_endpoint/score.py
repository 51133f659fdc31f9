"""Scoring script for the chat endpoint: the same file serves locally and on Azure ML.

Locally ``serve_local.py`` runs it in azureml-inference-server-http; on Azure ML a managed online deployment runs
it in the same server. ``init()`` loads the model once per worker from ``AZUREML_MODEL_DIR``; ``run(request)``
answers each POST /score. This file only adapts the server to ``chatft.serving`` (shipped beside it):

    chatft/serving/app.py          the request flow: accept, answer, JSON or event-stream responses, data collectors
    chatft/serving/contract.py     the request shapes (seed and OpenAI chat completions), parameters, 4xx errors
    chatft/serving/generation.py   the model, safe prompt tokenization, micro-batching, streaming, cancellation
    chatft/serving/settings.py     serving.json (beside this file): workers, threads, batching, limits
    chatft/serving/monitoring.py   one JSON line per request

A bad request gets a 4xx ``{"message": "..."}`` naming the problem, never a stack trace: 400 for a body that breaks
the contract (invalid JSON or UTF-8, nested too deeply, not an object, missing ``input_data``, bad roles, empty
messages, unpaired surrogates, parameters out of range or of the wrong type, unknown keys, a conversation beyond
the context), 405 for a method other than POST, 413 for a body over ``max_body_bytes``, 415 for a non-JSON
Content-Type or a charset other than UTF-8. ``run`` takes the raw request (``@rawhttp``) so that it sees the body
before anything parses it: left to the server, invalid JSON would reach a ``json.loads`` and come back as a 500.
With ``"stream": true`` (chat completions) the answer is server-sent ``chat.completion.chunk`` events ending with
``data: [DONE]``.

Each 200 JSON answer carries its timing in headers: ``x-chatft-generate-ms`` (the generate() call it came from),
``x-chatft-queue-ms``, ``x-chatft-batch-size``, ``x-chatft-prompt-tokens``, ``x-chatft-completion-tokens``,
``x-chatft-finish-reason`` (``time_limit`` where ``finish_reason`` says ``length``). The local router forwards
``/v1/chat/completions`` here with the header ``x-chatft-route``; that route takes only chat completions.
"""

# No ``from __future__ import annotations``: the server loads this file without registering it in sys.modules.
import os
import sys
from pathlib import Path

from azureml_inference_server_http.api.aml_request import rawhttp

HERE = Path(__file__).resolve().parent
# The one path edit left, for Azure ML: chatft ships beside this file in the deployment's code folder, but the server
# puts only its app root (the code folder's parent) on sys.path, and Azure names no variable for the code folder's
# mount path. Locally the launcher's app root is this folder, so the line does nothing there.
if (HERE / "chatft").is_dir() and str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from chatft.serving.app import ChatApp, Stream  # noqa: E402

_app: ChatApp | None = None


def init() -> None:
    global _app
    _app = ChatApp.start(os.environ["AZUREML_MODEL_DIR"], HERE / "serving.json")


@rawhttp
def run(request):
    """Answer one POST /score (a flask request, as ``@rawhttp`` passes it)."""
    from azureml_inference_server_http.api.aml_response import AMLResponse
    from flask import Response

    reply = _app.respond(request)
    if isinstance(reply, Stream):
        return Response(reply.events, mimetype="text/event-stream", headers=reply.headers)
    return AMLResponse(reply.body, reply.status, reply.headers, json_str=True)
