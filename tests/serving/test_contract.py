"""chatft.serving.contract: both request shapes parsed in-process, and every bad request refused with a message."""

from __future__ import annotations

import json

import pytest

from chatft.serving.contract import (
    CHAT_COMPLETIONS,
    CHAT_ROUTE,
    PARAMETERS,
    SEED,
    RequestError,
    parse_any,
    parse_request,
)
from tests.helpers.chat_requests import (
    BAD_CHAT_REQUESTS,
    BAD_PARAMETERS,
    BAD_REQUESTS,
    CHAT_REQUEST,
    ODD_BODIES,
    SEED_REQUEST,
    as_body,
    with_parameters,
)


def test_parse_request_applies_defaults():
    messages, params = parse_request(json.dumps({"input_data": {"input_string": [{"role": "user", "content": "x"}]}}))
    assert messages == [{"role": "user", "content": "x"}]
    assert params == {name: default for name, (_, default, _, _) in PARAMETERS.items()}


def test_parse_request_keeps_given_parameters():
    _, params = parse_request(as_body(with_parameters({"temperature": 0, "max_new_tokens": 4, "do_sample": False})))
    assert params["temperature"] == 0.0 and isinstance(params["temperature"], float)
    assert params["max_new_tokens"] == 4 and params["do_sample"] is False


@pytest.mark.parametrize(
    ("request_body", "expected"), BAD_REQUESTS + [(with_parameters(p), e) for p, e in BAD_PARAMETERS]
)
def test_parse_request_rejects(request_body, expected):
    with pytest.raises(RequestError) as caught:
        parse_request(as_body(request_body))
    assert expected in str(caught.value)
    assert caught.value.status == 400


def test_parse_any_reads_the_chat_completions_shape():
    from chatft.serving.generation import sampling_key

    request = {**CHAT_REQUEST, "temperature": 0, "model": "chat-ft", "stream": False, "n": 1}
    chat = parse_any(json.dumps(request))
    assert (chat.shape, chat.messages, chat.model) == (CHAT_COMPLETIONS, CHAT_REQUEST["messages"], "chat-ft")
    assert chat.params["max_new_tokens"] == 8 and sampling_key(chat.params) == ("greedy",)
    assert not chat.stream
    chat = parse_any({"messages": CHAT_REQUEST["messages"], "max_completion_tokens": 5})
    assert chat.params["max_new_tokens"] == 5 and chat.params["top_p"] == PARAMETERS["top_p"][1]
    assert parse_any(SEED_REQUEST).shape == SEED
    streamed = parse_any({**CHAT_REQUEST, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.stream and streamed.include_usage


def test_the_chat_completions_route_takes_only_that_shape():
    with pytest.raises(RequestError, match="/v1/chat/completions takes the chat-completions shape"):
        parse_any(SEED_REQUEST, route=CHAT_ROUTE)
    assert parse_any(CHAT_REQUEST, route=CHAT_ROUTE).route == CHAT_ROUTE


@pytest.mark.parametrize(("request_body", "expected"), BAD_CHAT_REQUESTS)
def test_parse_any_rejects_bad_chat_completions(request_body, expected):
    with pytest.raises(RequestError) as caught:
        parse_any(as_body(request_body))
    assert expected in str(caught.value)


@pytest.mark.parametrize(("request_body", "expected"), ODD_BODIES, ids=lambda v: str(v)[:24])
def test_odd_bodies_are_refused_with_a_message(request_body, expected):
    with pytest.raises(RequestError) as caught:
        parse_any(request_body)
    assert expected in str(caught.value) and caught.value.status == 400
    assert len(str(caught.value)) < 400  # nothing large is echoed back
