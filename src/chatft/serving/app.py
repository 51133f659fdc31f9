"""The endpoint's request flow: accept a request, answer it, shape the response (JSON or an event stream).

``score.py`` adapts azureml-inference-server-http to this module: ``init()`` builds one ``ChatApp`` per worker,
``run(request)`` hands each raw request to ``ChatApp.respond`` and turns the ``Reply`` or ``Stream`` it gets into the
server's response. A request goes through two steps, one method each: ``accept`` (the one place a prompt is accepted:
body read, contract checked, prompt screened and tokenized) and ``answer`` (the one place an answer is produced: the
prompt queued for a batch). A streaming client that disconnects cancels its generation: the server's next write
fails, the event generator is closed, and the row stops at its next token.

On Azure ML, with the deployment's data collector on, every answered request's messages and answer go to the
``model_inputs`` / ``model_outputs`` collections (azureml-ai-monitoring's ``Collector``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chatft.content_safety import Decision
from chatft.serving.contract import (
    CHAT_ROUTE,
    EXAMPLE,
    ROUTE_HEADER,
    SCORE_ROUTE,
    SEED,
    ChatRequest,
    RequestError,
    default_parameters,
    parse_any,
)
from chatft.serving.generation import ChatGenerator, Completion, Job, MicroBatcher
from chatft.serving.monitoring import RequestLog
from chatft.serving.settings import load_serving_settings

logger = logging.getLogger("azmlinfsrv.chatft")


@dataclass
class Reply:
    """A JSON response: ``body`` with ``status`` and extra ``headers``."""

    body: dict
    status: int
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """A server-sent event stream (status 200): ``events`` are the ``data: ...`` chunks, sent as they come."""

    events: Iterator[str]
    # No buffering on the way (X-Accel-Buffering: proxies); the body is sent chunked as events come.
    headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def data_collectors() -> tuple | None:
    """(model_inputs, model_outputs) collectors where Azure ML's data collector is configured, else None."""
    if not (os.environ.get("AZUREML_MDC_CONFIG_PATH") or os.environ.get("AZUREML_MDC_ENABLED", "").lower() == "true"):
        return None
    from azureml.ai.monitoring import Collector

    def on_error(err):  # the collector must never fail a request
        logger.warning("data collector: %s", err)

    return Collector(name="model_inputs", on_error=on_error), Collector(name="model_outputs", on_error=on_error)


def route_of(request) -> str:
    """The route a request came by: the local router marks forwarded chat completions with ROUTE_HEADER."""
    return CHAT_ROUTE if request.headers.get(ROUTE_HEADER) == CHAT_ROUTE else SCORE_ROUTE


def read_body(request, limit: int) -> str:
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


# ---- response shapes -----------------------------------------------------------------------------------------------


def finish_reason(completion: Completion) -> str:
    # OpenAI's finish reasons know no time limit: a cut answer is "length" either way.
    return "stop" if completion.finish_reason in ("stop", "cancelled") else "length"


def usage(completion: Completion) -> dict:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }


def chat_completion(completion: Completion, model: str) -> dict:
    """An OpenAI ``chat.completion`` object for one answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": finish_reason(completion),
            }
        ],
        "usage": usage(completion),
    }


def timing_headers(completion: Completion) -> dict[str, str]:
    """Each 200 JSON answer's timing, from the generate() call it came from."""
    return {
        "x-chatft-generate-ms": f"{completion.generate_ms:.1f}",
        "x-chatft-queue-ms": f"{completion.queue_ms:.1f}",
        "x-chatft-batch-size": str(completion.batch_size),
        "x-chatft-prompt-tokens": str(completion.prompt_tokens),
        "x-chatft-completion-tokens": str(completion.completion_tokens),
        "x-chatft-finish-reason": completion.finish_reason,
    }


class ChatApp:
    """One worker's model, batcher, content-safety guard, request log and data collectors."""

    def __init__(self, settings: dict, generator: ChatGenerator, guard, log: RequestLog, collectors: tuple | None):
        self.settings, self.generator, self.guard, self.log = settings, generator, guard, log
        self.batcher = MicroBatcher(generator, settings["max_batch_size"], settings["batch_wait_ms"])
        self.collectors = collectors

    @classmethod
    def start(cls, model_dir: str | os.PathLike, serving_file: Path) -> ChatApp:
        """Load serving.json and the model (warmed up with one token); what ``score.init()`` does once."""
        from chatft.content_safety import Guard

        settings = load_serving_settings(serving_file)
        guard = Guard.from_environment(serving_file)  # content safety: on when CONTENT_SAFETY_ENDPOINT is set
        generator = ChatGenerator(model_dir, max_time_s=settings["generation_timeout_s"])
        generator.reply([{"role": "user", "content": "Hi"}], {**default_parameters(), "max_new_tokens": 1})  # warm-up
        return cls(settings, generator, guard, RequestLog(), data_collectors())

    def accept(self, request) -> tuple[ChatRequest, list[int]]:
        """The one place a prompt is accepted: the body read, the contract checked, the prompt tokenized.

        Raises RequestError (a 4xx). A screening hook refusing the prompt raises one with ``category`` set.
        """
        chat = parse_any(read_body(request, self.settings["max_body_bytes"]), route=route_of(request))
        screened = self.guard.check_prompt(chat.messages)  # content safety: 400 naming the category, or 503
        if screened.status is not None:
            raise RequestError(screened.message, screened.status, screened.record.get("blocked_category"))
        return chat, self.generator.encode(chat.messages, chat.params)

    def answer(self, chat: ChatRequest, prompt: list[int]) -> Job:
        """The one place an answer is produced: the prompt joins a batch; the job streams it and ends with it."""
        return self.batcher.start(prompt, chat.params, stream=chat.stream)

    def respond(self, request) -> Reply | Stream:
        """Answer one POST /score: a 4xx Reply naming the problem, a Stream, or the JSON answer."""
        started, route = time.perf_counter(), route_of(request)
        try:
            chat, prompt = self.accept(request)
        except RequestError as err:
            self.log.record(route=route, status=err.status, started=started, blocked=err.category, error=str(err)[:300])
            return Reply({"message": str(err)}, err.status)
        job = self.answer(chat, prompt)
        if chat.stream:
            return Stream(self._event_stream(chat, job, started))
        try:
            completion = job.wait()
        except Exception:
            self.log.record(route=route, status=500, started=started)
            raise
        screened = self.guard.check_answer(completion.text)  # a blocked answer becomes the refusal
        if screened.status is not None:
            self.log.record(route=route, status=screened.status, started=started, error=screened.message)
            return Reply({"message": screened.message}, screened.status, screened.headers)
        completion.text = screened.text
        record = {"completion": completion, "messages": chat.messages, "blocked": screened.blocked_category}
        self.log.record(route=route, status=200, started=started, **record)
        self._collect(chat, completion)
        if chat.shape == SEED:
            body = {"output": completion.text}
        else:
            body = chat_completion(completion, chat.model or self.generator.model_dir.name)
        return Reply(self.guard.mark_filtered(body, screened), 200, {**timing_headers(completion), **screened.headers})

    def _collect(self, chat: ChatRequest, completion: Completion) -> None:
        if self.collectors is None:
            return
        import pandas as pd

        inputs, outputs = self.collectors
        context = inputs.collect(pd.DataFrame([{"messages": json.dumps(chat.messages), **chat.params}]))
        row = {"output": completion.text, "finish_reason": completion.finish_reason}
        row.update({"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens})
        outputs.collect(pd.DataFrame([row]), context)

    def _stop_stream(self, job: Job, decision, event) -> Iterator[str]:
        """Screening stopped a streamed answer: the generation is cancelled, the refusal takes the blocked window's
        place with ``finish_reason: content_filter``, or (service down, fail_closed) an error event names the 503.
        Returns the status for the request log."""
        job.cancel()
        job.done.wait(timeout=5)
        if decision.status is not None:
            yield f"data: {json.dumps({'error': {'message': decision.message, 'status': decision.status}})}\n\n"
            return decision.status
        yield event({"content": decision.text})
        yield event({}, "content_filter", content_filter={"filtered": True, "category": decision.blocked_category})
        yield "data: [DONE]\n\n"
        return 200

    def _event_stream(self, chat: ChatRequest, job: Job, started: float) -> Iterator[str]:
        """Server-sent events in OpenAI's chunk shape; closing this generator (the client left) cancels the job."""
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": chat.model or self.generator.model_dir.name,
        }

        def event(delta: dict, reason: str | None = None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return f"data: {json.dumps({**base, 'choices': [choice], **extra})}\n\n"

        completion, status, blocked = None, 200, None
        try:
            yield event({"role": "assistant", "content": ""})
            for piece in self.guard.screen_stream(job.deltas()):  # content safety: released window by window
                if isinstance(piece, Decision):
                    blocked = piece.blocked_category
                    status = yield from self._stop_stream(job, piece, event)
                    return
                yield event({"content": piece})
            completion = job.wait()
            yield event({}, finish_reason(completion))
            if chat.include_usage:
                yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage(completion)})}\n\n"
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
            record = {"completion": completion, "stream": True, "messages": chat.messages, "blocked": blocked}
            self.log.record(route=chat.route, status=status, started=started, **record)
            if completion is not None and status == 200:
                self._collect(chat, completion)
