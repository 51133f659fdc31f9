"""chatft.content_safety through the real azure-ai-contentsafety client, against a SIMULATION of the service.

The simulation (tests/helpers/fake_content_safety.py) is a real HTTP server on loopback that follows the REST spec's
request and response shapes; which texts it rates harmful is set by each test (it has no classifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatft import content_safety
from tests.helpers.fake_content_safety import ContentSafetySimulation, FakeCredential

SERVING = Path(__file__).resolve().parents[1] / "components" / "deploy_endpoint" / "serving.json"


def _settings(**change) -> content_safety.Settings:
    raw = json.loads(SERVING.read_text())["content_safety"]
    return content_safety.load_settings({**raw, **change}, "serving.json")


@pytest.fixture
def simulation():
    with ContentSafetySimulation() as sim:
        yield sim


def _guard(endpoint: str, **change) -> content_safety.Guard:
    return content_safety.Guard(content_safety.Screen(endpoint, _settings(**change), credential=FakeCredential()))


def test_shipped_settings_load():
    settings = _settings()
    assert set(settings.thresholds) == set(content_safety.CATEGORIES)
    assert settings.on_unavailable in content_safety.FAILURE_MODES


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"thresholds": {"Hate": 4}}, "must name exactly"),
        ({"thresholds": {"Hate": 3, "Sexual": 4, "Violence": 4, "SelfHarm": 4}}, "thresholds.Hate is 3"),
        ({"on_unavailable": "ignore"}, "fail_closed or fail_open"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"retries": 9}, "retries"),
        ({"refusal": " "}, "refusal"),
        ({"stream_window_chars": 0}, "stream_window_chars"),
        ({"extra": 1}, "unknown key(s) ['extra']"),
    ],
)
def test_bad_settings_are_refused_with_the_key(change, expected):
    with pytest.raises(ValueError, match="serving.json") as err:
        _settings(**change)
    assert expected in str(err.value)


def test_off_without_an_endpoint_passes_everything():
    guard = content_safety.Guard.from_environment(SERVING, environ={})
    assert not guard.enabled
    assert guard.check_prompt([{"role": "user", "content": "anything"}]).status is None
    answer = guard.check_answer("some answer")
    assert answer.text == "some answer" and not answer.filtered and answer.headers == {}


def test_on_from_the_environment_and_only_https_or_loopback(simulation):
    guard = content_safety.Guard.from_environment(
        SERVING, environ={content_safety.ENDPOINT_ENV: simulation.endpoint}, credential=FakeCredential()
    )
    assert guard.enabled
    with pytest.raises(ValueError, match="expected https://"):
        content_safety.Screen("http://contoso.example", _settings(), credential=FakeCredential())


def test_pass_sends_the_documented_request_with_a_bearer_token(simulation):
    credential = FakeCredential()
    guard = content_safety.Guard(content_safety.Screen(simulation.endpoint, _settings(), credential=credential))
    decision = guard.check_prompt([{"role": "user", "content": "How do I reset my router?"}])
    assert decision.status is None
    assert decision.record["blocked"] is False and decision.record["blocked_category"] is None
    assert simulation.requests == [
        {
            "text": "How do I reset my router?",
            "categories": ["Hate", "Sexual", "Violence", "SelfHarm"],
            "outputType": "FourSeverityLevels",
        }
    ]
    assert credential.scopes == [("https://cognitiveservices.azure.com/.default",)]


def test_block_on_prompt_names_the_category_and_respects_the_threshold(simulation):
    simulation.rules["MARK-V"] = {"Violence": 4}
    simulation.rules["MARK-LOW"] = {"Hate": 2}
    guard = _guard(simulation.endpoint)
    blocked = guard.check_prompt([{"role": "user", "content": "earlier turn MARK-V"}, {"role": "user", "content": "x"}])
    assert blocked.status == 400
    assert "category Violence at severity 4" in blocked.message
    assert blocked.record["blocked_category"] == "Violence"
    low = guard.check_prompt([{"role": "user", "content": "MARK-LOW"}])  # severity 2 < threshold 4
    assert low.status is None and low.record["severities"]["Hate"] == 2
    strict = _guard(simulation.endpoint, thresholds={"Hate": 2, "Sexual": 4, "Violence": 4, "SelfHarm": 4})
    assert strict.check_prompt([{"role": "user", "content": "MARK-LOW"}]).status == 400
    assert guard.stats()["blocked_prompt"] == 1 and guard.stats()["blocked_Violence"] == 1
    assert guard.stats()["block_rate"] == pytest.approx(1 / 2)


def test_block_on_answer_replaces_it_with_the_refusal(simulation):
    simulation.rules["MARK-S"] = {"SelfHarm": 6}
    guard = _guard(simulation.endpoint)
    decision = guard.check_answer("here is MARK-S")
    assert decision.filtered and decision.status is None
    assert decision.text == _settings().refusal
    assert decision.headers == {"x-chatft-content-filter": "answer blocked: SelfHarm severity 6"}
    body = guard.mark_filtered({"output": decision.text}, decision)
    assert body["content_filter"] == {"filtered": True, "category": "SelfHarm"}


def test_long_texts_are_screened_in_chunks_within_the_limit(simulation):
    # The simulation refuses a text over 10,000 characters, as the service does: one request would fail.
    simulation.rules["MARK-H"] = {"Hate": 6}
    text = ("word " * 2000) * 2 + "MARK-H " + "tail " * 1000  # 25,007 characters, the marker in the middle
    decision = _guard(simulation.endpoint).check_answer(text)
    sizes = [len(request["text"]) for request in simulation.requests]
    assert len(sizes) == 3 and max(sizes) <= content_safety.MAX_TEXT_CHARS
    assert "".join(request["text"] for request in simulation.requests) == text  # nothing left unscreened
    assert decision.filtered and decision.record["blocked_category"] == "Hate"


def test_chunks_cut_at_whitespace_and_keep_every_character():
    text = "a" * 9_995 + " " + "b" * 20
    assert content_safety.chunks(text) == ["a" * 9_995 + " ", "b" * 20]
    no_space = "x" * 25_000
    assert [len(piece) for piece in content_safety.chunks(no_space)] == [10_000, 10_000, 5_000]
    assert content_safety.chunks("") == [""]


@pytest.mark.parametrize("outage", ["connection refused", "HTTP 503"])
def test_service_down_fail_closed_refuses_with_503(simulation, outage):
    guard = _guard(simulation.endpoint, on_unavailable="fail_closed", retries=0, timeout_s=2)
    if outage == "HTTP 503":
        simulation.status_override = 503
    else:
        simulation.stop()
    prompt = guard.check_prompt([{"role": "user", "content": "hello"}])
    assert prompt.status == 503 and "fail_closed" in prompt.message
    answer = guard.check_answer("an answer")
    assert answer.status == 503 and "withheld" in answer.message
    assert prompt.record["unavailable"] and guard.stats()["unavailable_prompt"] == 1


def test_service_down_fail_open_serves_and_logs(simulation, caplog):
    guard = _guard(simulation.endpoint, on_unavailable="fail_open", retries=0, timeout_s=2)
    simulation.stop()
    with caplog.at_level("WARNING", logger="azmlinfsrv.chatft.content_safety"):
        prompt = guard.check_prompt([{"role": "user", "content": "hello"}])
        answer = guard.check_answer("an answer")
    assert prompt.status is None and answer.status is None and answer.text == "an answer"
    assert answer.headers == {"x-chatft-content-filter": "answer unscreened: service unavailable"}
    assert "served unscreened (fail_open)" in caplog.text


def _pieces(text: str, size: int = 7) -> list[str]:
    """A streamed answer's deltas: ``text`` in pieces of ``size`` characters, as a generator would send them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def test_a_stream_that_passes_leaves_in_screened_windows_and_loses_nothing(simulation):
    guard = _guard(simulation.endpoint, stream_window_chars=20)
    answer = "Unplug the router, wait thirty seconds, plug it back in, then check the lights."
    out = list(guard.screen_stream(_pieces(answer)))
    assert all(isinstance(piece, str) for piece in out) and "".join(out) == answer
    assert all(len(piece) >= 20 for piece in out[:-1]) and len(out) < len(_pieces(answer))
    # Each window was screened with the whole answer before it, and nothing was sent before it was screened.
    screened = [request["text"] for request in simulation.requests]
    assert screened == ["".join(out[: i + 1]) for i in range(len(out))]
    assert guard.stats()["screened"] == 1  # one answer, however many windows


def test_a_stream_blocked_mid_answer_never_sends_the_blocked_window(simulation):
    simulation.rules["MARK-V"] = {"Violence": 6}
    guard = _guard(simulation.endpoint, stream_window_chars=20)
    # The marker straddles the first two windows: screening the window alone would miss it.
    answer = "A calm first part MA" + "RK-V and the harmful rest of the answer follows here."
    out = list(guard.screen_stream(_pieces(answer, 4)))
    sent, decision = out[:-1], out[-1]
    assert "".join(sent) == answer[:20] and "MARK-V" not in "".join(sent)
    assert isinstance(decision, content_safety.Decision) and decision.filtered
    assert decision.text == _settings().refusal and decision.record["blocked_category"] == "Violence"
    assert guard.stats()["blocked_answer"] == 1 and guard.stats()["block_rate"] == 1.0


def test_a_short_stream_is_screened_once_at_its_end(simulation):
    simulation.rules["MARK-S"] = {"SelfHarm": 6}
    guard = _guard(simulation.endpoint)  # the shipped window (200) is longer than this answer
    out = list(guard.screen_stream(_pieces("short MARK-S answer")))
    assert len(out) == 1 and out[0].filtered and len(simulation.requests) == 1


@pytest.mark.parametrize("mode", ["fail_closed", "fail_open"])
def test_a_stream_with_the_service_down(simulation, mode):
    guard = _guard(simulation.endpoint, on_unavailable=mode, retries=0, timeout_s=2, stream_window_chars=10)
    simulation.stop()
    out = list(guard.screen_stream(_pieces("an answer that is long enough for two windows")))
    if mode == "fail_closed":
        assert len(out) == 1 and out[0].status == 503 and "withheld" in out[0].message  # nothing sent unscreened
    else:
        assert "".join(out) == "an answer that is long enough for two windows"
    assert guard.stats()["unavailable_answer"] >= 1


def test_off_a_stream_passes_through_piece_by_piece():
    guard = content_safety.Guard(None)
    assert list(guard.screen_stream(iter(["a", "b", "c"]))) == ["a", "b", "c"]


def test_deployment_environment():
    assert content_safety.deployment_environment(None, "cid") == {}
    assert content_safety.deployment_environment("https://cs.example/", "cid") == {
        "CONTENT_SAFETY_ENDPOINT": "https://cs.example/",
        "CONTENT_SAFETY_CLIENT_ID": "cid",
    }
