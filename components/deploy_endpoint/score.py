"""Scoring script for the chat endpoint: the same file serves locally and on Azure ML.

Locally ``serve_local.py`` runs it in azureml-inference-server-http; on Azure ML a managed online deployment runs
it in the same server. Either way ``init()`` loads the model once per worker from ``AZUREML_MODEL_DIR`` and
``run(request)`` answers each POST /score. The server has one route, so both request shapes share it:

The seed's shape::

    request:  {"input_data": {"input_string": [{"role": "user", "content": "Hi"}],
                              "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
    response: {"output": "Hello! How can I help?"}

The OpenAI chat-completions shape (what Azure's newer fine-tuned deployments speak), told apart by ``messages``::

    request:  {"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "max_tokens": 128}
    response: {"id": "chatcmpl-...", "object": "chat.completion", "created": 1700000000, "model": "...",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 31, "completion_tokens": 4, "total_tokens": 35}}

Parameters (seed: in ``input_data.parameters``; chat completions: top level). Each one's default and range is in
``PARAMETERS`` below, their one home:

    temperature     0.0..2.0, default 0.7; 0 means greedy decoding
    top_p           0.01..1.0, default 0.95
    max_new_tokens  1..1024, default 128 (chat completions: ``max_tokens`` or ``max_completion_tokens``)
    do_sample       true|false, default true; false means greedy decoding (seed shape only)

Chat completions also accept ``model`` (echoed back), ``stream: false`` and ``n: 1``; anything else unknown is
refused. ``finish_reason`` is ``stop`` (end of turn) or ``length`` (``max_new_tokens`` or the generation time
limit; the ``x-chatft-finish-reason`` header tells ``time_limit`` apart).

A bad request gets a 4xx ``{"message": "..."}`` naming the problem (the server's own error shape), never a stack
trace: 400 for a body that breaks the contract (invalid JSON or UTF-8, not an object, missing ``input_data``, bad
roles, empty messages, parameters out of range or of the wrong type, unknown keys, a conversation beyond the
context), 405 for a method other than POST, 413 for a body over ``max_body_bytes``, 415 for a non-JSON
Content-Type. ``run`` takes the raw request (``@rawhttp``) so that it sees the body before anything parses it:
left to the server, invalid JSON would reach a ``json.loads`` and come back as a 500.

Serving: concurrent requests are generated together (``MicroBatcher``): requests that share sampling settings and
arrive within ``batch_wait_ms`` of each other (or while a batch runs) go through one left-padded ``generate()``
call, up to ``max_batch_size``; each row stops at its own end of turn or ``max_new_tokens``, and greedy answers
equal the unbatched ones. Every setting is in ``serving.json`` beside this file. Each 200 answer carries headers
with its timing: ``x-chatft-generate-ms`` (the generate() call it came from), ``x-chatft-queue-ms`` (waiting for a
batch), ``x-chatft-batch-size``, ``x-chatft-prompt-tokens``, ``x-chatft-completion-tokens``,
``x-chatft-finish-reason``.

``parse_request`` and ``ChatGenerator`` carry no server dependency, so the registered MLflow model
(``components/register_model/chat_pyfunc.py``) reuses them and answers exactly like the endpoint.
"""

# No ``from __future__ import annotations``: the server loads this file without registering it in sys.modules, and
# dataclasses then cannot resolve annotations given as strings.
import json
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from azureml_inference_server_http.api.aml_request import rawhttp
except ImportError:  # the MLflow pyfunc imports this file for parse_request/ChatGenerator, without the server

    def rawhttp(func):
        return func


# A child of the server's configured "azmlinfsrv" logger, so these lines reach its log (locally and on Azure ML).
logger = logging.getLogger("azmlinfsrv.chatft")

SERVING_FILE = Path(__file__).resolve().with_name("serving.json")
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
_EXAMPLE = '{"input_data": {"input_string": [{"role": "user", "content": "..."}], "parameters": {...}}}'
_CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "..."}], "max_tokens": 128}'
SEED, CHAT_COMPLETIONS = "seed", "chat_completions"


class RequestError(ValueError):
    """The request does not follow the contract; the message says what and where (sent back with ``status``)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---- serving settings ----------------------------------------------------------------------------------------------

# key: (type, lowest). Meanings and the arithmetic behind the values are in serving.json's "_notes".
SERVING_KEYS: dict[str, tuple[type, float]] = {
    "worker_count": (int, 1),
    "threads": (int, 1),
    "max_batch_size": (int, 1),
    "batch_wait_ms": (float, 0),
    "max_body_bytes": (int, 1024),
    "generation_timeout_s": (float, 1),
    "max_concurrent_requests_per_instance": (int, 1),
    "request_timeout_ms": (int, 1000),
}


def load_serving_settings(path: str | os.PathLike = SERVING_FILE) -> dict[str, Any]:
    """Read and check serving.json; a missing, unknown or inconsistent setting is an error naming the file and key."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found; serving.json ships beside score.py and must be staged with it") from None
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of settings")
    unknown = sorted(set(raw) - set(SERVING_KEYS) - {"_notes"})
    missing = sorted(set(SERVING_KEYS) - set(raw))
    if unknown or missing:
        raise ValueError(f"{path}: unknown key(s) {unknown or '-'}, missing key(s) {missing or '-'}")
    settings = {}
    for key, (kind, lowest) in SERVING_KEYS.items():
        value = raw[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (kind is int and not isinstance(value, int)) or value < lowest:
            raise ValueError(f"{path}: {key} must be {_JSON_TYPE[kind]} >= {lowest}, got {json.dumps(value)}")
        settings[key] = value
    # The relations the numbers must keep (serving.json's "_notes" explain each).
    if settings["max_batch_size"] > settings["max_concurrent_requests_per_instance"]:
        raise ValueError(f"{path}: max_batch_size exceeds max_concurrent_requests_per_instance; a batch could not fill")
    if settings["threads"] <= settings["max_concurrent_requests_per_instance"]:
        raise ValueError(f"{path}: threads must exceed max_concurrent_requests_per_instance (a thread for GET /)")
    if settings["request_timeout_ms"] <= 2 * settings["generation_timeout_s"] * 1000:
        raise ValueError(f"{path}: request_timeout_ms must exceed 2 x generation_timeout_s (one batch ahead + its own)")
    return settings


# ---- the request contract ------------------------------------------------------------------------------------------


def _check_parameters(raw: Any, where: str, names: dict[str, str]) -> dict[str, Any]:
    """Validate ``raw`` (request name -> value) against PARAMETERS; ``names`` maps request names to PARAMETERS."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(f"{where} must be an object, got {type(raw).__name__}")
    prefix = f"{where}." if where else ""  # chat-completions parameters sit at the top level
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise RequestError(
            f"{where or 'request'}: unknown parameter(s) {', '.join(unknown)}; expected {', '.join(names)}"
        )
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
            raise RequestError(f"{prefix}{name} must be {_JSON_TYPE[kind]}, got {json.dumps(value)}")
        if low is not None and not low <= value <= high:
            raise RequestError(f"{prefix}{name}={value} is out of range; allowed {low}..{high}")
        params[target] = kind(value)
    return params


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
            raise RequestError(f"{where}[{i}].role is {json.dumps(role)}; expected {'|'.join(ROLES)}")
        if role == "system" and i != 0:
            raise RequestError(f"{where}[{i}]: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise RequestError(f"{where}[{i}].content must be a non-empty string")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise RequestError(f'{where}: the last message must have role "user" (the model answers it)')
    return messages


def decode_body(raw_data: str | bytes | dict) -> dict:
    """The request body as a JSON object (JSON text is decoded; a dict passes through)."""
    if isinstance(raw_data, str | bytes):
        if not raw_data.strip():
            raise RequestError(f"request body is empty; POST JSON with Content-Type: application/json: {_EXAMPLE}")
        try:
            body = json.loads(raw_data)
        except ValueError as err:
            raise RequestError(f"request body is not valid JSON ({err}); expected {_EXAMPLE}") from None
    else:
        body = raw_data
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}; expected {_EXAMPLE}")
    return body


def parse_request(raw_data: str | bytes | dict) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Validate a request in the seed's shape (JSON text or a decoded object); return (messages, parameters)."""
    body = decode_body(raw_data)
    if "input_data" not in body:
        raise RequestError(
            f'request body has no "input_data"; expected {_EXAMPLE} (or "messages" for chat completions: '
            f"{_CHAT_EXAMPLE})"
        )
    if set(body) != {"input_data"}:
        raise RequestError(f"unknown top-level key(s) {', '.join(sorted(set(body) - {'input_data'}))}")
    data = body["input_data"]
    if not isinstance(data, dict) or "input_string" not in data:
        raise RequestError(f'input_data must be an object with "input_string"; expected {_EXAMPLE}')
    unknown = sorted(set(data) - {"input_string", "parameters"})
    if unknown:
        raise RequestError(f"input_data: unknown key(s) {', '.join(unknown)}; expected input_string, parameters")
    messages = _check_messages(data["input_string"], "input_data.input_string", _EXAMPLE)
    params = _check_parameters(data.get("parameters"), "input_data.parameters", {name: name for name in PARAMETERS})
    return messages, params


def parse_chat_completion(body: dict) -> tuple[list[dict[str, str]], dict[str, Any], str | None]:
    """Validate a decoded chat-completions request; return (messages, parameters, model name or None)."""
    if "input_data" in body:
        raise RequestError('request body has both "messages" and "input_data"; send one shape')
    accepted = ("model", "stream", "n")  # what OpenAI clients send besides the parameters
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model must be a string, got {json.dumps(model)}")
    for key, allowed in (("stream", False), ("n", 1)):
        if key in body and (body[key] != allowed or isinstance(body[key], bool) != isinstance(allowed, bool)):
            raise RequestError(f"{key}={json.dumps(body[key])} is not supported; only {json.dumps(allowed)}")
    rest = {key: value for key, value in body.items() if key not in (*accepted, "messages")}
    unknown = sorted(set(rest) - set(CHAT_COMPLETION_PARAMETERS))
    if unknown:
        expected = ", ".join(["messages", *CHAT_COMPLETION_PARAMETERS, *accepted])
        raise RequestError(f"unknown key(s) {', '.join(unknown)}; expected {expected}")
    messages = _check_messages(body["messages"], "messages", _CHAT_EXAMPLE)
    params = _check_parameters(rest, "", CHAT_COMPLETION_PARAMETERS)
    return messages, params, model


def parse_any(raw_data: str | bytes | dict) -> tuple[str, list[dict[str, str]], dict[str, Any], str | None]:
    """Validate a request in either shape; return (shape, messages, parameters, model name or None)."""
    body = decode_body(raw_data)
    if "messages" in body:
        return (CHAT_COMPLETIONS, *parse_chat_completion(body))
    return (SEED, *parse_request(body), None)


# ---- generation ----------------------------------------------------------------------------------------------------


def sampling_key(params: dict[str, Any]) -> tuple:
    """Requests with the same key can share one generate() call."""
    if params["do_sample"] and params["temperature"] > 0:
        return ("sample", params["temperature"], params["top_p"])
    return ("greedy",)


@dataclass
class Completion:
    """One answer and what it cost; ``generate_ms`` is the whole generate() call it was part of."""

    text: str
    finish_reason: str  # stop | length | time_limit
    prompt_tokens: int
    completion_tokens: int
    generate_ms: float
    batch_size: int
    queue_ms: float = 0.0


class _RowLimit:
    """Stopping criterion: row i is done after ``limits[i]`` new tokens (rows of a batch ask for different lengths).

    generate() only calls it, so it need not subclass StoppingCriteria (which would import transformers here).
    """

    def __init__(self, prompt_length: int, limits: list[int]):
        import torch

        self.prompt_length = prompt_length
        self.limits = torch.tensor(limits)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_length) >= self.limits.to(input_ids.device)


class ChatGenerator:
    """A chat model and its tokenizer, loaded once; ``encode`` + ``generate`` answer a batch, ``reply`` one chat."""

    def __init__(self, model_path: str | os.PathLike, max_time_s: float | None = None):
        from chatft.devices import inference_dtype, pick_device
        from chatft.model_source import find_model_dir, load_causal_lm, load_tokenizer, stop_token_ids

        started = time.perf_counter()
        self.model_dir = find_model_dir(model_path)
        self.max_time_s = max_time_s
        # The one device policy (chatft/devices.py): CUDA, MPS or CPU, and the dtype each serves in.
        self.device = pick_device()
        dtype = inference_dtype(self.device)
        self.tokenizer = load_tokenizer(self.model_dir)
        # Fast tokenizers raise "Already borrowed" when two threads use one at once; request threads encode.
        self._tokenizer_lock = threading.Lock()
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

    def encode(self, messages: list[dict[str, str]], params: dict[str, Any]) -> list[int]:
        """The prompt's token ids through the model's chat template, refused if the answer could not fit."""
        with self._tokenizer_lock:
            prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        ids = list(prompt["input_ids"])
        if self.context_length and len(ids) + params["max_new_tokens"] > self.context_length:
            raise RequestError(
                f"the conversation is {len(ids)} tokens; with max_new_tokens={params['max_new_tokens']} it "
                f"exceeds the model's context of {self.context_length}; shorten the history or lower max_new_tokens"
            )
        return ids

    def generate(self, prompts: list[list[int]], params: list[dict[str, Any]]) -> list[Completion]:
        """Answer several prompts in one left-padded generate() call; they must share ``sampling_key``."""
        import torch
        from transformers import StoppingCriteriaList

        keys = {sampling_key(p) for p in params}
        if len(keys) != 1:
            raise ValueError(f"one batch needs one sampling setting, got {sorted(keys)}")
        width = max(len(ids) for ids in prompts)
        # Left padding: every row's next token lands in the same column; the mask hides the padding.
        input_ids = torch.full((len(prompts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        limits = [p["max_new_tokens"] for p in params]
        key = keys.pop()
        sampling = {"do_sample": True, "temperature": key[1], "top_p": key[2]} if key[0] == "sample" else {}
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max(limits),
                stopping_criteria=StoppingCriteriaList([_RowLimit(width, limits)]),
                max_time=self.max_time_s,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **(sampling or {"do_sample": False}),
            )
        generate_ms = (time.perf_counter() - started) * 1000
        completions = []
        for row, ids in enumerate(prompts):
            # A row that stopped early is filled with padding (often the eos id): cut at its own limit first.
            new = output[row, width:].tolist()[: limits[row]]
            ends = [i for i, token in enumerate(new) if token in self.stop_ids]
            if ends:
                new, reason, count = new[: ends[0]], "stop", ends[0] + 1
            else:
                reason = "length" if len(new) == limits[row] else "time_limit"
                count = len(new)
            with self._tokenizer_lock:
                text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            completions.append(Completion(text, reason, len(ids), count, generate_ms, len(prompts)))
        return completions

    def reply(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """One conversation, unbatched (the MLflow pyfunc's path)."""
        return self.generate([self.encode(messages, params)], [params])[0].text


@dataclass
class _Job:
    prompt: list[int]
    params: dict[str, Any]
    key: tuple
    enqueued: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    completion: Completion | None = None
    error: Exception | None = None


class MicroBatcher:
    """One thread owns the model; request threads queue their prompts and wait for their own answers.

    A batch takes the oldest request and the next ones with the same sampling settings, up to ``max_batch_size``.
    It leaves when full, or once ``batch_wait_ms`` have passed since both the model became free and the latest of
    its requests arrived: clients that just got their answers rejoin the next batch instead of splitting it, and a
    lone request waits ``batch_wait_ms`` once.
    """

    def __init__(self, generator: ChatGenerator, max_batch_size: int, batch_wait_ms: float):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self._pending: list[_Job] = []
        self._free_since = 0.0  # when the last batch finished (perf_counter)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="chatft-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], params: dict[str, Any]) -> Completion:
        job = _Job(prompt, params, sampling_key(params))
        with self._changed:
            self._pending.append(job)
            self._changed.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.completion

    def _next_batch(self) -> list[_Job]:
        with self._changed:
            while not self._pending:
                self._changed.wait()
            key = self._pending[0].key
            while True:
                batch = [job for job in self._pending if job.key == key][: self.max_batch_size]
                deadline = max(self._free_since, batch[-1].enqueued) + self.batch_wait_s
                remaining = deadline - time.perf_counter()
                if len(batch) == self.max_batch_size or remaining <= 0:
                    break
                self._changed.wait(remaining)
            for job in batch:
                self._pending.remove(job)
            return batch

    def _serve(self) -> None:
        while True:
            batch = self._next_batch()
            started = time.perf_counter()
            try:
                completions = self.generator.generate([job.prompt for job in batch], [job.params for job in batch])
            except Exception as err:  # handed to each waiting request, which raises it (a 500 with the server's log)
                self._free_since = time.perf_counter()
                for job in batch:
                    job.error = err
                    job.done.set()
                continue
            self._free_since = time.perf_counter()
            logger.info("batch of %d %s: %.0f ms", len(batch), batch[0].key[0], completions[0].generate_ms)
            for job, completion in zip(batch, completions, strict=True):
                completion.queue_ms = (started - job.enqueued) * 1000
                job.completion = completion
                job.done.set()


# ---- the server's entry points -------------------------------------------------------------------------------------

_settings: dict[str, Any] = {}
_generator: ChatGenerator | None = None
_batcher: MicroBatcher | None = None


def init() -> None:
    global _settings, _generator, _batcher
    # chatft ships beside this file (the component snapshot, or the deployment's code folder), but the server
    # puts only its app root on sys.path, which on Azure ML is the code folder's parent.
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    _settings = load_serving_settings()
    _generator = ChatGenerator(os.environ["AZUREML_MODEL_DIR"], max_time_s=_settings["generation_timeout_s"])
    _generator.reply([{"role": "user", "content": "Hi"}], {**_default_parameters(), "max_new_tokens": 1})  # warm-up
    _batcher = MicroBatcher(_generator, _settings["max_batch_size"], _settings["batch_wait_ms"])


def _default_parameters() -> dict[str, Any]:
    return {name: default for name, (_, default, _, _) in PARAMETERS.items()}


def _read_body(request, limit: int) -> str:
    """The body as text, refused before it is read when over ``limit`` bytes or not JSON."""
    if request.method != "POST":
        raise RequestError(f"{request.method} is not supported on /score; POST a JSON body ({_EXAMPLE})", 405)
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(f"request body is {request.content_length} bytes; the limit is {limit}", 413)
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise RequestError(f"Content-Type is {mimetype}; send Content-Type: application/json", 415)
    data = request.stream.read(limit + 1)  # a chunked body has no Content-Length: never read past the limit
    if len(data) > limit:
        raise RequestError(f"request body is over the limit of {limit} bytes", 413)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not UTF-8 ({err})") from None


def _chat_completion(completion: Completion, model: str | None) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or _generator.model_dir.name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                # OpenAI's finish reasons know no time limit: a cut answer is "length" either way.
                "finish_reason": "stop" if completion.finish_reason == "stop" else "length",
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


@rawhttp
def run(request):
    """Answer one POST /score (a flask request, as ``@rawhttp`` passes it)."""
    from azureml_inference_server_http.api.aml_response import AMLResponse

    try:
        shape, messages, params, model = parse_any(_read_body(request, _settings["max_body_bytes"]))
        completion = _batcher.submit(_generator.encode(messages, params), params)
    except RequestError as err:
        return AMLResponse({"message": str(err)}, err.status, json_str=True)
    body = {"output": completion.text} if shape == SEED else _chat_completion(completion, model)
    headers = {
        "x-chatft-generate-ms": f"{completion.generate_ms:.1f}",
        "x-chatft-queue-ms": f"{completion.queue_ms:.1f}",
        "x-chatft-batch-size": str(completion.batch_size),
        "x-chatft-prompt-tokens": str(completion.prompt_tokens),
        "x-chatft-completion-tokens": str(completion.completion_tokens),
        "x-chatft-finish-reason": completion.finish_reason,
    }
    return AMLResponse(body, 200, headers, json_str=True)
