"""Azure AI Content Safety in front of the chat endpoint: screen the prompt before generation, the answer after.

Managed online endpoints serve open models without the content filter that Azure's pay-as-you-go deployments put in
front of theirs, so ``score.py`` calls the service itself, through the ``azure-ai-contentsafety`` client
(``POST {endpoint}/contentsafety/text:analyze?api-version=2023-10-01``), authenticated as the endpoint's managed
identity (Entra ID; the account has local auth, i.e. keys, turned off).

On when ``CONTENT_SAFETY_ENDPOINT`` is set in the server's environment (deploy_endpoint sets it on Azure when given a
Content Safety account); off otherwise, which is the local default. The rest lives in serving.json's
``content_safety`` section, checked by :func:`load_settings`:

    thresholds       {"Hate": 4, "Sexual": 4, "Violence": 4, "SelfHarm": 4}: a text is blocked when the service
                     rates a category at this severity or above. FourSeverityLevels gives 0, 2, 4 or 6 (safe, low,
                     medium, high), so 2|4|6 are the useful thresholds; 4 is Azure OpenAI's default filter (medium).
    on_unavailable   "fail_closed": a request the service could not screen gets 503 with a message;
                     "fail_open": it is served unscreened, and the server logs a warning.
    timeout_s        connect and read timeout per call to the service.
    retries          retries per call (azure-core's RetryPolicy) before the service counts as unavailable.
    refusal          the text that replaces a blocked answer.
    stream_window_chars  a streamed answer is held back in windows of this many characters; each window is sent
                     only after the whole answer so far passed screening (see :meth:`Guard.screen_stream`).

Limits of the service (Azure AI Content Safety docs, quickstart "Analyze text content": "The default maximum length
for text submissions is 10K characters"; the SDK's ``AnalyzeTextOptions.text``: "a maximum of 10k Unicode
characters (Unicode code points) in the text of one request"): a longer text is screened in chunks of at most
``MAX_TEXT_CHARS`` code points, cut at whitespace where there is some, and blocked if any chunk is.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chatft.errors import ChatftError

logger = logging.getLogger("azmlinfsrv.chatft.content_safety")

ENDPOINT_ENV = "CONTENT_SAFETY_ENDPOINT"  # https://<account>.cognitiveservices.azure.com/
CLIENT_ID_ENV = "CONTENT_SAFETY_CLIENT_ID"  # the user-assigned identity's client id; unset: DefaultAzureCredential
CATEGORIES = ("Hate", "Sexual", "Violence", "SelfHarm")  # the service's TextCategory values
SEVERITIES = (2, 4, 6)  # FourSeverityLevels thresholds that mean something (0 would block every text)
MAX_TEXT_CHARS = 10_000  # per text:analyze request, in Unicode code points (Python str length)
FAILURE_MODES = ("fail_closed", "fail_open")
SETTINGS_KEYS = {"thresholds", "on_unavailable", "timeout_s", "retries", "refusal", "stream_window_chars"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class ContentSafetyUnavailable(ChatftError, RuntimeError):
    """The service could not screen a text (unreachable, timed out, or answered with an error)."""


@dataclass(frozen=True)
class Settings:
    thresholds: dict[str, int]
    on_unavailable: str
    timeout_s: float
    retries: int
    refusal: str
    stream_window_chars: int = 200


def load_settings(raw: Any, where: str) -> Settings:
    """Check serving.json's ``content_safety`` section; a bad value is an error naming ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: content_safety must be an object")
    unknown, missing = sorted(set(raw) - SETTINGS_KEYS), sorted(SETTINGS_KEYS - set(raw))
    if unknown or missing:
        raise ValueError(f"{where}: content_safety: unknown key(s) {unknown or '-'}, missing key(s) {missing or '-'}")
    thresholds = raw["thresholds"]
    if not isinstance(thresholds, dict) or set(thresholds) != set(CATEGORIES):
        raise ValueError(f"{where}: content_safety.thresholds must name exactly {', '.join(CATEGORIES)}")
    for category, value in thresholds.items():
        if value not in SEVERITIES or isinstance(value, bool):
            raise ValueError(
                f"{where}: content_safety.thresholds.{category} is {json.dumps(value)}; expected one of "
                f"{', '.join(map(str, SEVERITIES))} (block at low, medium or high severity)"
            )
    if raw["on_unavailable"] not in FAILURE_MODES:
        raise ValueError(f"{where}: content_safety.on_unavailable must be {' or '.join(FAILURE_MODES)}")
    timeout, retries, refusal = raw["timeout_s"], raw["retries"], raw["refusal"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
        raise ValueError(f"{where}: content_safety.timeout_s must be a number in (0, 60]")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 5:
        raise ValueError(f"{where}: content_safety.retries must be an integer 0..5")
    if not isinstance(refusal, str) or not refusal.strip():
        raise ValueError(f"{where}: content_safety.refusal must be a non-empty string")
    window = raw["stream_window_chars"]
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_TEXT_CHARS:
        raise ValueError(f"{where}: content_safety.stream_window_chars must be an integer 1..{MAX_TEXT_CHARS}")
    return Settings(dict(thresholds), raw["on_unavailable"], float(timeout), retries, refusal, window)


def chunks(text: str, limit: int = MAX_TEXT_CHARS) -> list[str]:
    """``text`` in pieces of at most ``limit`` code points, cut after the last whitespace of a piece if it has one.

    Nothing is dropped: the pieces joined give ``text`` back."""
    pieces = []
    while len(text) > limit:
        window = text[:limit]
        cut = max(window.rfind(" "), window.rfind("\n"), window.rfind("\t"))
        cut = cut + 1 if cut > limit // 2 else limit  # no whitespace late enough: a hard cut
        pieces.append(text[:cut])
        text = text[cut:]
    return [*pieces, text] if text or not pieces else pieces


@dataclass(frozen=True)
class Verdict:
    """What screening decided for one text. ``category``/``severity``: the worst category at or over its threshold."""

    blocked: bool
    severities: dict[str, int] = field(default_factory=dict)  # the highest severity per category over all chunks
    category: str | None = None
    severity: int | None = None
    unavailable: str | None = None  # why the service could not screen it (then blocked says what fail_* decided)


class Screen:
    """A ContentSafetyClient and the thresholds: :meth:`verdict` screens one text (in chunks)."""

    def __init__(self, endpoint: str, settings: Settings, credential=None, **client_kwargs):
        from azure.ai.contentsafety import ContentSafetyClient

        self.settings = settings
        self.endpoint = endpoint
        if credential is None:
            credential = _default_credential()
        url = urlparse(endpoint)
        # azure-core refuses to send a bearer token over plain http; the one exception made here is loopback, where
        # the tests' simulation of the service listens. Anything else must be https.
        self._request_options = {}
        if url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS:
            self._request_options["enforce_https"] = False
        elif url.scheme != "https":
            raise ValueError(f"{ENDPOINT_ENV}={endpoint!r}: expected https://<account>.cognitiveservices.azure.com/")
        self._client = ContentSafetyClient(
            endpoint.rstrip("/"),
            credential,
            connection_timeout=settings.timeout_s,
            read_timeout=settings.timeout_s,
            retry_total=settings.retries,
            retry_backoff_factor=0.2,
            **client_kwargs,
        )

    def _analyze(self, text: str) -> dict[str, int]:
        from azure.ai.contentsafety.models import AnalyzeTextOptions, AnalyzeTextOutputType
        from azure.core.exceptions import AzureError

        options = AnalyzeTextOptions(
            text=text, categories=list(CATEGORIES), output_type=AnalyzeTextOutputType.FOUR_SEVERITY_LEVELS
        )
        try:
            result = self._client.analyze_text(options, **self._request_options)
        except AzureError as err:  # connection refused, timeouts, 4xx/5xx answers: all are "could not screen"
            raise ContentSafetyUnavailable(f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
        return {str(item.category): int(item.severity or 0) for item in result.categories_analysis}

    def verdict(self, text: str) -> Verdict:
        """Screen ``text``; raises :class:`ContentSafetyUnavailable` when the service could not."""
        worst: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        if not text.strip():  # nothing to rate (the service refuses an empty text)
            return Verdict(False, worst)
        for piece in chunks(text):
            for category, severity in self._analyze(piece).items():
                worst[category] = max(worst.get(category, 0), severity)
        over = [(severity, c) for c, severity in worst.items() if severity >= self.settings.thresholds.get(c, 99)]
        if not over:
            return Verdict(False, worst)
        severity, category = max(over)
        return Verdict(True, worst, category, severity)


def _default_credential():
    """The endpoint's managed identity: the user-assigned one named by client id, else whatever DefaultAzureCredential
    finds (a system-assigned identity on Azure; az login on a laptop)."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    client_id = os.environ.get(CLIENT_ID_ENV)
    return ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()


@dataclass(frozen=True)
class Decision:
    """What score.py does with a request: ``status`` set = refuse it with ``message``; else serve, with ``text``
    replacing the answer when ``filtered``. ``record`` is the block decision for the monitoring log."""

    status: int | None = None
    message: str | None = None
    filtered: bool = False
    text: str | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def stops(self) -> bool:
        """The answer may not go out as written: refused (``status``) or replaced by the refusal (``filtered``)."""
        return self.status is not None or self.filtered

    @property
    def blocked_category(self) -> str | None:
        """The category that had the answer replaced by the refusal (what the request log counts as blocked)."""
        return self.record.get("blocked_category") if self.filtered else None

    @property
    def headers(self) -> dict[str, str]:
        """``x-chatft-content-filter``: what screening decided, on every answer when screening is on."""
        if not self.record:
            return {}
        return {"x-chatft-content-filter": self.record["content_filter"]}


class Guard:
    """The hook score.py calls: ``check_prompt`` after the request is accepted, ``check_answer`` once it is answered.

    Without an endpoint (:meth:`from_environment` with ``CONTENT_SAFETY_ENDPOINT`` unset) it passes everything and
    adds nothing. It counts what it screened and blocked per worker (``stats``); every block and outage is logged
    with the running block rate, which the endpoint's log (and Azure Monitor, reading it) shows.
    """

    def __init__(self, screen: Screen | None):
        self.screen = screen
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, serving_file: str | os.PathLike, environ=os.environ, credential=None) -> Guard:
        endpoint = environ.get(ENDPOINT_ENV, "").strip()
        if not endpoint:
            return cls(None)
        path = Path(serving_file)
        raw = json.loads(path.read_text(encoding="utf-8")).get("content_safety")
        screen = Screen(endpoint, load_settings(raw, str(path)), credential=credential)
        logger.info("content safety on: %s, thresholds %s", endpoint, screen.settings.thresholds)
        return cls(screen)

    @property
    def enabled(self) -> bool:
        return self.screen is not None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
        screened = counts.get("screened", 0)
        blocked = counts.get("blocked_prompt", 0) + counts.get("blocked_answer", 0)
        return {**counts, "block_rate": blocked / screened if screened else 0.0}

    def _count(self, *keys: str) -> dict[str, Any]:
        with self._lock:
            self._counts.update(keys)
        return self.stats()

    def _screen(self, text: str, what: str, again: bool = False) -> Verdict:
        """Screen one text and count it; ``again``: a longer version of a text already counted (a stream's next
        window), so the block rate stays per answer, not per window."""
        screened = () if again else ("screened",)
        try:
            verdict = self.screen.verdict(text)
        except ContentSafetyUnavailable as err:
            closed = self.screen.settings.on_unavailable == "fail_closed"
            stats = self._count(*screened, f"unavailable_{what}")
            log = logger.error if closed else logger.warning
            log(
                "content safety unavailable for the %s (%s): %s; %s",
                what,
                err,
                "refused (fail_closed)" if closed else "served unscreened (fail_open)",
                _rate(stats),
            )
            return Verdict(closed, unavailable=str(err))
        stats = self._count(*screened, *([f"blocked_{what}", f"blocked_{verdict.category}"] if verdict.blocked else []))
        if verdict.blocked:
            logger.warning(
                "content safety blocked the %s: %s severity %d; %s",
                what,
                verdict.category,
                verdict.severity,
                _rate(stats),
            )
        return verdict

    def check_prompt(self, messages: list[dict[str, str]]) -> Decision:
        """Screen the conversation (every turn: an attack can sit in the history). 400 naming the category if
        blocked; 503 if the service is down and on_unavailable is fail_closed."""
        if self.screen is None:
            return Decision()
        verdict = self._screen("\n".join(m["content"] for m in messages), "prompt")
        record = _record("prompt", verdict)
        if verdict.unavailable and verdict.blocked:
            message = (
                "content safety screening is unavailable, so the request was not served (fail_closed); retry later"
            )
            return Decision(503, message, record=record)
        if verdict.blocked:
            message = (
                f"the prompt was blocked by content safety: category {verdict.category} at severity "
                f"{verdict.severity} (threshold {self.screen.settings.thresholds[verdict.category]})"
            )
            return Decision(400, message, record=record)
        return Decision(record=record)

    @staticmethod
    def mark_filtered(body: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """Say in the response body that the answer was filtered: ``"content_filter": {"filtered": true,
        "category": ...}`` beside the answer, and for chat completions ``finish_reason: "content_filter"`` (OpenAI's
        own value for it)."""
        if not decision.filtered:
            return body
        body["content_filter"] = {"filtered": True, "category": decision.record["blocked_category"]}
        if "choices" in body:
            body["choices"][0]["finish_reason"] = "content_filter"
        return body

    def check_answer(self, text: str, again: bool = False) -> Decision:
        """Screen the model's answer; a blocked one is replaced by the refusal (``filtered``), or 503 when the
        service is down and on_unavailable is fail_closed."""
        if self.screen is None:
            return Decision(text=text)
        verdict = self._screen(text, "answer", again)
        record = _record("answer", verdict)
        if verdict.unavailable and verdict.blocked:
            message = "content safety screening is unavailable, so the answer was withheld (fail_closed); retry later"
            return Decision(503, message, record=record)
        if verdict.blocked:
            return Decision(filtered=True, text=self.screen.settings.refusal, record=record)
        return Decision(text=text, record=record)

    def screen_stream(self, pieces: Iterable[str]) -> Iterator[str | Decision]:
        """A streamed answer, screened before it leaves: the pieces to send, and a :class:`Decision` last if
        screening stopped the answer (blocked: ``filtered``; the service down under fail_closed: ``status`` 503).

        Pieces are held back until ``stream_window_chars`` characters gather; then the whole answer so far (not the
        window alone: a harmful sentence can straddle two windows) is screened, and the window is released only if
        it passed. Text already sent cannot be recalled, but a blocked window never leaves. The rest is screened
        when generation ends. Without screening the pieces pass through unchanged, one by one.
        """
        if self.screen is None:
            yield from pieces
            return
        window = self.screen.settings.stream_window_chars
        sent, held, again = "", "", False
        for piece in pieces:
            held += piece
            if len(held) < window:
                continue
            decision = self.check_answer(sent + held, again)
            if decision.stops:
                yield decision
                return
            yield held
            sent, held, again = sent + held, "", True
        if held:
            decision = self.check_answer(sent + held, again)
            yield decision if decision.stops else held


def _rate(stats: dict[str, Any]) -> str:
    blocked = stats.get("blocked_prompt", 0) + stats.get("blocked_answer", 0)
    return f"blocked {blocked} of {stats.get('screened', 0)} texts screened by this worker ({stats['block_rate']:.1%})"


def _record(what: str, verdict: Verdict) -> dict[str, Any]:
    """The block decision as the monitoring log's fields (``blocked_category`` None when nothing was blocked)."""
    if verdict.unavailable:
        summary = f"{what} unscreened: service unavailable"
    elif verdict.blocked:
        summary = f"{what} blocked: {verdict.category} severity {verdict.severity}"
    else:
        summary = f"{what} passed"
    return {
        "content_filter": summary,
        "blocked": verdict.blocked,
        "blocked_category": verdict.category,
        "blocked_severity": verdict.severity,
        "screened": what,
        "severities": verdict.severities,
        "unavailable": verdict.unavailable,
    }


def deployment_environment(endpoint: str | None, client_id: str | None) -> dict[str, str]:
    """The environment variables that turn screening on in a deployment (deploy_endpoint.py)."""
    if not endpoint:
        return {}
    env = {ENDPOINT_ENV: endpoint}
    if client_id:
        env[CLIENT_ID_ENV] = client_id
    return env
