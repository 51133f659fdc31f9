"""score.py with content safety on: init() and run() in-process against a SIMULATION of Azure AI Content Safety.

The simulation is a real HTTP server on loopback with the service's REST shapes (tests/helpers/fake_content_safety.py);
it rates a text harmful only when it contains a marker the test sets. Cases: pass, block on prompt, block on answer,
service down with fail_closed and with fail_open.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from chatft.serving.generation import Completion
from tests.helpers.components import load_script
from tests.helpers.fake_content_safety import ContentSafetySimulation, FakeCredential

COMPONENT = Path(__file__).resolve().parents[2] / "components" / "deploy_endpoint"


def _request(score, body: dict):
    from flask import Flask, request

    context = Flask("score_cs_test").test_request_context(
        "/score", method="POST", data=json.dumps(body), content_type="application/json"
    )
    context.push()
    try:
        reply = score.run(request._get_current_object())
    finally:
        context.pop()
    return reply.status_code, json.loads(reply.get_data()), reply.headers


def _seed(text: str) -> dict:
    return {
        "input_data": {
            "input_string": [{"role": "user", "content": text}],
            "parameters": {"do_sample": False, "max_new_tokens": 6},
        }
    }


@pytest.fixture(scope="module")
def staged(tiny_llama_dir, tmp_path_factory):
    """score.py and serving.json in a folder of their own (the tests change serving.json's failure setting)."""
    root = tmp_path_factory.mktemp("score_cs")
    shutil.copy2(COMPONENT / "score.py", root / "score.py")
    shutil.copy2(COMPONENT / "serving.json", root / "serving.json")
    model = root / "model"
    shutil.copytree(tiny_llama_dir, model / "merged_model")
    return root, model


def _init(staged, monkeypatch, endpoint: str, on_unavailable: str = "fail_closed"):
    root, model = staged
    serving = json.loads((root / "serving.json").read_text())
    serving["content_safety"].update(on_unavailable=on_unavailable, retries=0, timeout_s=2)
    (root / "serving.json").write_text(json.dumps(serving))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(model))
    monkeypatch.setenv("CONTENT_SAFETY_ENDPOINT", endpoint)
    monkeypatch.setattr(sys, "path", list(sys.path))
    # The endpoint's managed identity, simulated: the client asks this credential for its bearer token.
    monkeypatch.setattr("chatft.content_safety._default_credential", FakeCredential)
    score = load_script("score_cs_under_test", root / "score.py")
    score.init()
    return score


def _stand_in(score, monkeypatch, text: str) -> None:
    """The model's answer, replaced by ``text`` (a fresh Completion per request: run() rewrites a filtered one)."""
    from types import SimpleNamespace

    job = SimpleNamespace(wait=lambda: Completion(text, "stop", 9, 8, 1.0, 1))
    monkeypatch.setattr(score._app, "answer", lambda chat, prompt: job)


def test_pass_then_block_on_prompt_then_block_on_answer(staged, monkeypatch):
    with ContentSafetySimulation() as sim:
        score = _init(staged, monkeypatch, sim.endpoint)
        assert score._app.guard.enabled
        status, body, headers = _request(score, _seed("How do I reset my router?"))
        assert status == 200 and "content_filter" not in body
        assert headers["x-chatft-content-filter"] == "answer passed"
        # The prompt was screened; the answer too when there was one (an empty text is not sent).
        assert [r["text"] for r in sim.requests] == ["How do I reset my router?", body["output"]][
            : 1 + bool(body["output"])
        ]

        sim.rules["MARK-VIOLENCE"] = {"Violence": 6}
        status, body, headers = _request(score, _seed("tell me MARK-VIOLENCE"))
        assert status == 400
        assert "blocked by content safety: category Violence at severity 6" in body["message"]

        # The tiny random model ends its turn at once (an empty answer, which is not screened: the service refuses
        # empty texts). Stand in for the model with a fixed answer that the simulation rates harmful.
        _stand_in(score, monkeypatch, "a canned answer with MARK-SEXUAL in it")
        sim.rules["MARK-SEXUAL"] = {"Sexual": 4}
        status, body, headers = _request(score, _seed("How do I reset my router?"))
        assert status == 200
        assert body["output"] == json.loads((staged[0] / "serving.json").read_text())["content_safety"]["refusal"]
        assert body["content_filter"] == {"filtered": True, "category": "Sexual"}
        assert headers["x-chatft-content-filter"] == "answer blocked: Sexual severity 4"
        chat = {"messages": [{"role": "user", "content": "How do I reset my router?"}], "max_tokens": 6}
        status, body, _ = _request(score, chat)
        assert status == 200 and body["choices"][0]["finish_reason"] == "content_filter"
        assert body["choices"][0]["message"]["content"] == score._app.guard.screen.settings.refusal
        assert score._app.guard.stats()["blocked_prompt"] == 1 and score._app.guard.stats()["blocked_answer"] == 2


def _stream(score, text: str) -> list[dict]:
    """POST a streamed chat request through score.run; the server-sent events, parsed ([DONE] as the string)."""
    from flask import Flask, request

    body = {"messages": [{"role": "user", "content": text}], "max_tokens": 6, "stream": True}
    context = Flask("score_cs_stream").test_request_context(
        "/score", method="POST", data=json.dumps(body), content_type="application/json"
    )
    context.push()
    try:
        reply = score.run(request._get_current_object())
        raw = "".join(reply.response)  # the events, as the generator yields them
    finally:
        context.pop()
    assert reply.mimetype == "text/event-stream"
    events = [line[len("data: ") :] for line in raw.split("\n\n") if line]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def _stand_in_stream(score, monkeypatch, pieces: list[str]) -> list:
    """The model's streamed answer, replaced by ``pieces``; returns a list that records whether it was cancelled."""
    import threading
    from types import SimpleNamespace

    cancelled, done = [], threading.Event()
    done.set()
    job = SimpleNamespace(
        deltas=lambda: iter(pieces),
        wait=lambda: Completion("".join(pieces), "stop", 9, 8, 1.0, 1),
        cancel=lambda: cancelled.append(True),
        done=done,
    )
    monkeypatch.setattr(score._app, "answer", lambda chat, prompt: job)
    return cancelled


def test_a_streamed_answer_is_screened_and_a_blocked_window_never_sent(staged, monkeypatch):
    with ContentSafetySimulation() as sim:
        score = _init(staged, monkeypatch, sim.endpoint)
        window = score._app.guard.screen.settings.stream_window_chars
        calm = "x" * window
        _stand_in_stream(score, monkeypatch, [calm[: window // 2], calm[window // 2 :], " fine ending"])
        events = _stream(score, "How do I reset my router?")
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]" and e["choices"])
        assert text == calm + " fine ending" and events[-2]["choices"][0]["finish_reason"] == "stop"

        sim.rules["MARK-HATE"] = {"Hate": 6}
        logged, record = [], score._app.log.record
        monkeypatch.setattr(score._app.log, "record", lambda **entry: logged.append(record(**entry)))
        cancelled = _stand_in_stream(score, monkeypatch, [calm, " and then MARK-HATE", " more"])
        events = _stream(score, "How do I reset my router?")
        sent = [e["choices"][0]["delta"].get("content", "") for e in events if e != "[DONE]"]
        refusal = score._app.guard.screen.settings.refusal
        assert sent == ["", calm, refusal, ""] and cancelled == [True]
        assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
        assert events[-2]["content_filter"] == {"filtered": True, "category": "Hate"} and events[-1] == "[DONE]"
        assert logged[-1]["blocked"] == "Hate" and logged[-1]["stream"] is True  # counts in the block rate


def test_service_down_fail_closed_answers_503(staged, monkeypatch):
    with ContentSafetySimulation() as sim:
        score = _init(staged, monkeypatch, sim.endpoint, "fail_closed")
        sim.stop()
        status, body, _ = _request(score, _seed("hello"))
    assert status == 503
    assert "content safety screening is unavailable" in body["message"]


def test_service_down_fail_open_serves_and_logs(staged, monkeypatch, caplog):
    with ContentSafetySimulation() as sim:
        score = _init(staged, monkeypatch, sim.endpoint, "fail_open")
        _stand_in(score, monkeypatch, "a canned answer")  # the tiny model's answers are empty
        sim.stop()
        with caplog.at_level("WARNING", logger="azmlinfsrv.chatft.content_safety"):
            status, body, headers = _request(score, _seed("hello"))
    assert status == 200 and body["output"] == "a canned answer"
    assert headers["x-chatft-content-filter"] == "answer unscreened: service unavailable"
    assert caplog.text.count("served unscreened (fail_open)") == 2  # prompt and answer
