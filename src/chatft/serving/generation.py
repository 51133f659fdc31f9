"""The model behind the endpoint: prompts tokenized safely, batched generation, streaming and cancellation.

``ChatGenerator`` holds the model and its tokenizer. ``encode`` renders the chat template but tokenizes message
*content* as plain text: a user who writes ``<|im_end|><|im_start|>system`` gets those characters, never the control
tokens, so no one can forge a system turn. ``generate`` answers several prompts in one left-padded generate() call,
handing each row's text to its job as tokens arrive and stopping rows whose client went away.

``MicroBatcher`` owns the model in one thread: request threads queue jobs (``start``) and read their answer
(``Job.wait``) or its pieces as they come (``Job.deltas``); ``Job.cancel`` stops that row at its next token.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from chatft.serving.contract import RequestError

logger = logging.getLogger("azmlinfsrv.chatft")


def sampling_key(params: dict[str, Any]) -> tuple:
    """Requests with the same key can share one generate() call."""
    if params["do_sample"] and params["temperature"] > 0:
        return ("sample", params["temperature"], params["top_p"])
    return ("greedy",)


@dataclass
class Completion:
    """One answer and what it cost; ``generate_ms`` is the whole generate() call it was part of."""

    text: str
    finish_reason: str  # stop | length | time_limit | cancelled
    prompt_tokens: int
    completion_tokens: int
    generate_ms: float
    batch_size: int
    queue_ms: float = 0.0
    first_token_ms: float | None = None  # from the job's start to its first piece of text (streaming)


_DONE = object()  # the end of a job's deltas


@dataclass
class Job:
    """One request's place in the batcher: its prompt, its answer so far, and whether its client still waits."""

    prompt: list[int]
    params: dict[str, Any]
    key: tuple = ()
    enqueued: float = field(default_factory=time.perf_counter)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion: Completion | None = None
    error: Exception | None = None
    first_token_at: float | None = None
    streaming: bool = False  # someone reads deltas(): only then is the text decoded token by token
    _deltas: queue.Queue = field(default_factory=queue.Queue)

    def push(self, text: str) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._deltas.put(text)

    def finish(self, completion: Completion | None = None, error: Exception | None = None) -> None:
        self.completion, self.error = completion, error
        if completion is not None and self.first_token_at is not None:
            completion.first_token_ms = (self.first_token_at - self.enqueued) * 1000
        self.done.set()
        self._deltas.put(_DONE)

    def cancel(self) -> None:
        """The client is gone: the row stops at its next token (the others in its batch go on)."""
        self.cancelled.set()

    def wait(self) -> Completion:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.completion

    def deltas(self) -> Iterator[str]:
        """The answer's text in pieces as the model writes it; raises the batch's error if generation failed."""
        while (piece := self._deltas.get()) is not _DONE:
            yield piece
        if self.error is not None:
            raise self.error


class _RowLimit:
    """Stopping criterion: row i is done after ``limits[i]`` new tokens, or once its job is cancelled.

    generate() only calls it, so it need not subclass StoppingCriteria (which would import transformers here).
    """

    def __init__(self, prompt_length: int, limits: list[int], jobs: list[Job] | None):
        import torch

        self.prompt_length = prompt_length
        self.limits = torch.tensor(limits)
        self.jobs = jobs

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = (input_ids.shape[1] - self.prompt_length) >= self.limits.to(input_ids.device)
        if self.jobs:
            gone = torch.tensor([job.cancelled.is_set() for job in self.jobs], device=input_ids.device)
            done = done | gone
        return done


class _RowStreamer:
    """generate()'s streamer: it gets the prompts once, then each step's new token per row; each row's new text
    goes to its job (text is held back while it ends in half a UTF-8 character)."""

    def __init__(self, generator: ChatGenerator, jobs: list[Job], limits: list[int]):
        self.generator, self.jobs, self.limits = generator, jobs, limits
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.open = [True] * len(jobs)
        self.cut = [False] * len(jobs)  # stopped because its client left
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.tolist()):
            if not self.open[row]:
                continue
            if token in self.generator.stop_ids or self.jobs[row].cancelled.is_set():
                self.open[row], self.cut[row] = False, token not in self.generator.stop_ids
                continue
            self.tokens[row].append(token)
            self.open[row] = len(self.tokens[row]) < self.limits[row]
            if not self.jobs[row].streaming:
                if self.jobs[row].first_token_at is None:  # time to first token, for monitoring
                    self.jobs[row].first_token_at = time.perf_counter()
                continue
            text = self.generator.decode(self.tokens[row]).lstrip()
            if text.endswith("\ufffd") or not text.startswith(self.sent[row]):
                continue
            if len(text) > len(self.sent[row]):
                self.jobs[row].push(text[len(self.sent[row]) :])
                self.sent[row] = text

    def end(self) -> None:
        """Send what was held back: an answer that ends in half a character (or bytes that never form one) ends in
        U+FFFD in the final text too, so the streamed text must end the same way."""
        for row, job in enumerate(self.jobs):
            text = self.generator.decode(self.tokens[row]).lstrip()
            if job.streaming and text.startswith(self.sent[row]) and len(text) > len(self.sent[row]):
                job.push(text[len(self.sent[row]) :])
                self.sent[row] = text


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
        # Control tokens (the template's markers): content must never produce them.
        self.special_ids = {i for i, token in self.tokenizer.added_tokens_decoder.items() if token.special}
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

    # ---- prompts ---------------------------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template's token ids for ``messages``, with every message's content tokenized as plain text.

        The template is rendered once with a unique marker in place of each content, which gives the template's
        own text around the contents. Usually the content holds no control-token text and the ids are exactly
        what ``apply_chat_template`` gives (what the model was trained on). When a content does, that content
        alone is tokenized with ``split_special_tokens``: ``<|im_end|>`` there becomes the characters ``<``,
        ``|``, ..., never the control token.
        """
        with self._tokenizer_lock:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            spans = self._content_spans(messages, text)
            # A control token whose characters overlap a content: the content held its text.
            forged = spans is None or any(
                token in self.special_ids and any(start < c_end and c_start < end for c_start, c_end in spans)
                for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
            )
            if not forged:
                return list(encoded["input_ids"])
            return self._piecewise_ids(messages)

    def _render_with_markers(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        markers = [f"\x00chatft{uuid.uuid4().hex}\x00" for _ in messages]
        marked = [{**m, "content": marker} for m, marker in zip(messages, markers, strict=True)]
        return self.tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False), markers

    def _template_pieces(self, messages: list[dict[str, str]]) -> list[str] | None:
        """The template's text between the contents (len(messages) + 1 pieces), or None if the template moves or
        repeats a content (then every content is tokenized as text on its own)."""
        rendered, markers = self._render_with_markers(messages)
        pieces = re.split("|".join(re.escape(m) for m in markers), rendered)
        found = re.findall("|".join(re.escape(m) for m in markers), rendered)
        return pieces if found == markers else None

    def _content_spans(self, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]] | None:
        """Where each content sits in the rendered ``text`` (None when that cannot be told)."""
        pieces = self._template_pieces(messages)
        if pieces is None:
            return None
        for contents in ([m["content"] for m in messages], [m["content"].strip() for m in messages]):
            spans, position = [], 0
            for piece, content in zip(pieces, contents, strict=False):
                position += len(piece)
                spans.append((position, position + len(content)))
                position += len(content)
            if "".join(p + c for p, c in zip(pieces, [*contents, ""], strict=True)) == text:
                return spans
        return None

    def _piecewise_ids(self, messages: list[dict[str, str]]) -> list[int]:
        pieces = self._template_pieces(messages)
        if pieces is None:
            raise RequestError("the model's chat template moves message contents; this endpoint cannot serve it", 500)
        ids: list[int] = []
        for piece, message in zip(pieces, [*messages, None], strict=True):
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            if message is not None:
                content = self.tokenizer(message["content"], add_special_tokens=False, split_special_tokens=True)
                ids += content["input_ids"]
        return ids

    def encode(self, messages: list[dict[str, str]], params: dict[str, Any]) -> list[int]:
        """The prompt's token ids, refused if the answer could not fit in the model's context."""
        ids = self.prompt_ids(messages)
        if self.context_length and len(ids) + params["max_new_tokens"] > self.context_length:
            raise RequestError(
                f"the conversation is {len(ids)} tokens; with max_new_tokens={params['max_new_tokens']} it "
                f"exceeds the model's context of {self.context_length}; shorten the history or lower max_new_tokens"
            )
        return ids

    def decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- generation ------------------------------------------------------------------------------------------

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]], jobs: list[Job] | None = None
    ) -> list[Completion]:
        """Answer several prompts in one left-padded generate() call; they must share ``sampling_key``.

        With ``jobs`` (one per prompt), each row's text goes to its job as it is generated, and a cancelled job's
        row stops at its next token.
        """
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
        streamer = _RowStreamer(self, jobs, limits) if jobs else None
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                max_new_tokens=max(limits),
                stopping_criteria=StoppingCriteriaList([_RowLimit(width, limits, jobs)]),
                streamer=streamer,
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
            if streamer is not None and streamer.cut[row]:
                # Its client left: the row stopped there and generate() padded it up to the batch's end.
                new = streamer.tokens[row]
                reason, count = "cancelled", len(new)
            elif ends:
                new, reason, count = new[: ends[0]], "stop", ends[0] + 1
            else:
                reason = "length" if len(new) == limits[row] else "time_limit"
                count = len(new)
            text = self.decode(new).strip()
            completions.append(Completion(text, reason, len(ids), count, generate_ms, len(prompts)))
        return completions

    def reply(self, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        """One conversation, unbatched (the MLflow pyfunc's path)."""
        return self.generate([self.encode(messages, params)], [params])[0].text


class MicroBatcher:
    """One thread owns the model; request threads queue their prompts and wait for their own answers.

    A batch takes the oldest request and the next ones with the same sampling settings, up to ``max_batch_size``.
    It leaves when full, or once ``batch_wait_ms`` have passed since both the model became free and the latest of
    its requests arrived: clients that just got their answers rejoin the next batch instead of splitting it, and a
    lone request waits ``batch_wait_ms`` once. A job cancelled while it still queues never reaches the model.
    """

    def __init__(self, generator: ChatGenerator, max_batch_size: int, batch_wait_ms: float):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self._pending: list[Job] = []
        self._free_since = 0.0  # when the last batch finished (perf_counter)
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="chatft-batcher", daemon=True)
        self._thread.start()

    def start(self, prompt: list[int], params: dict[str, Any], stream: bool = False) -> Job:
        """Queue one prompt; the returned job ends with its answer (``wait``), and with ``stream`` hands it over in
        pieces as they are generated (``deltas``)."""
        job = Job(prompt, params, sampling_key(params), streaming=stream)
        with self._changed:
            self._pending.append(job)
            self._changed.notify_all()
        return job

    def submit(self, prompt: list[int], params: dict[str, Any]) -> Completion:
        return self.start(prompt, params).wait()

    def _next_batch(self) -> list[Job]:
        with self._changed:
            while True:
                for job in [job for job in self._pending if job.cancelled.is_set()]:
                    self._pending.remove(job)
                    job.finish(Completion("", "cancelled", len(job.prompt), 0, 0.0, 0))
                if self._pending:
                    break
                self._changed.wait(0.5)  # wake now and then to drop jobs cancelled while they queue
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
                completions = self.generator.generate(
                    [job.prompt for job in batch], [job.params for job in batch], jobs=batch
                )
            except Exception as err:  # handed to each waiting request, which raises it (a 500 with the server's log)
                self._free_since = time.perf_counter()
                for job in batch:
                    job.finish(error=err)
                continue
            self._free_since = time.perf_counter()
            logger.info("batch of %d %s: %.0f ms", len(batch), batch[0].key[0], completions[0].generate_ms)
            for job, completion in zip(batch, completions, strict=True):
                completion.queue_ms = (started - job.enqueued) * 1000
                job.finish(completion)
