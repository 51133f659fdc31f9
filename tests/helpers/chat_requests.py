"""Chat requests the serving tests send: the seed's and the chat-completions shape, and bad ones with the message
each must get back."""

from __future__ import annotations

import json

from chatft.serving.contract import default_parameters

SEED_REQUEST = {
    "input_data": {
        "input_string": [{"role": "user", "content": "How do I reset my router?"}],
        "parameters": {"temperature": 0.7, "max_new_tokens": 16},
    }
}
CHAT_REQUEST = {"messages": [{"role": "user", "content": "How do I reset my router?"}], "max_tokens": 8}
QUESTIONS = [
    "How do I reset my router?",
    "My internet keeps dropping every evening. What should I check first?",
    "Hi",
    "Can you explain, step by step, how to change the Wi-Fi password on a home router?",
]
# (request body, words the 400 message must contain)
BAD_REQUESTS = [
    ("{not json", "not valid JSON"),
    ("", "request body is empty"),
    ("[1, 2]", "must be a JSON object"),
    ({"inputs": []}, 'no "input_data"'),
    ({"input_data": {"input_string": []}}, "input_string is empty"),
    ({"input_data": {"input_string": "hello"}}, "must be a list"),
    ({"input_data": {"input_string": [{"role": "bot", "content": "hi"}]}}, 'role is "bot"'),
    ({"input_data": {"input_string": [{"role": "user", "content": "  "}]}}, "content must be a non-empty string"),
    ({"input_data": {"input_string": [{"role": "user", "content": 42}]}}, "content must be a non-empty string"),
    ({"input_data": {"input_string": [{"role": "user"}]}}, 'exactly "role" and "content"'),
    (
        {"input_data": {"input_string": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}},
        'last message must have role "user"',
    ),
    (
        {"input_data": {"input_string": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}},
        "system message may only come first",
    ),
    ({"input_data": {"input_string": [{"role": "user", "content": "a"}], "extra": 1}}, "unknown key(s) extra"),
    ({**SEED_REQUEST, "more": 1}, "unknown top-level key(s) more"),
    ({"input_data": {"input_string": [{"role": "user", "content": "a"}], "parameters": [1]}}, "must be an object"),
]
BAD_PARAMETERS = [
    ({"temperature": 5}, "temperature=5 is out of range"),
    ({"temperature": -0.1}, "temperature=-0.1 is out of range"),
    ({"top_p": 1.5}, "top_p=1.5 is out of range"),
    ({"max_new_tokens": 0}, "max_new_tokens=0 is out of range"),
    ({"max_new_tokens": 100000}, "max_new_tokens=100000 is out of range"),
    ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer, got 1.5"),
    ({"temperature": True}, "temperature must be a number, got true"),
    ({"do_sample": "yes"}, 'do_sample must be true or false, got "yes"'),
    ({"seed": 1}, "unknown parameter(s) seed"),
]
BAD_CHAT_REQUESTS = [
    ({"messages": []}, "messages is empty"),
    ({"messages": "hi"}, "messages must be a list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 'messages[0].role is "tool"'),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "content must be a non-empty"),
    ({**CHAT_REQUEST, "stream": "yes"}, 'stream must be true or false, got "yes"'),
    ({**CHAT_REQUEST, "stream_options": {"include_usage": True}}, "stream_options is only allowed with stream=true"),
    ({**CHAT_REQUEST, "stream": True, "stream_options": {"x": 1}}, "stream_options must be"),
    ({**CHAT_REQUEST, "n": 2}, "n=2 is not supported"),
    ({**CHAT_REQUEST, "tools": []}, "unknown key(s) tools"),
    ({**CHAT_REQUEST, "max_completion_tokens": 8}, "give one of max_tokens and max_completion_tokens"),
    ({**CHAT_REQUEST, "temperature": "hot"}, 'temperature must be a number, got "hot"'),
    ({**CHAT_REQUEST, "max_tokens": 0}, "max_tokens=0 is out of range"),
    ({**CHAT_REQUEST, "model": 5}, "model must be a string"),
    ({**CHAT_REQUEST, **SEED_REQUEST}, 'both "messages" and "input_data"'),
]

# Bad-request classes beyond the contract's own checks: encodings, nesting, numbers JSON allows and Python reads.
DEEP = "[" * 100_000 + "]" * 100_000
ODD_BODIES = [
    (DEEP, "nested too deeply"),
    ('{"input_data": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000 + "}", "nested too deeply"),
    ('\ufeff{"input_data": {}}', "not valid JSON"),  # a byte-order mark
    (
        '{"messages": [{"role": "user", "content": "hi \\ud800 there"}]}',  # an escaped unpaired surrogate
        "unpaired UTF-16 surrogate",
    ),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + "9" * 5000 + "}", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature=NaN is out of range"),
    ('{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', "top_p=Infinity is out of range"),
    ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', "max_tokens must be an integer"),
    ('{"messages": [{"role": "user", "content": "hi"}], "' + "k" * 5000 + '": 1}', "characters)"),
]


def with_parameters(parameters: dict) -> dict:
    return {"input_data": {"input_string": SEED_REQUEST["input_data"]["input_string"], "parameters": parameters}}


def as_body(request) -> str:
    return request if isinstance(request, str) else json.dumps(request)


def greedy_params(max_new_tokens: int) -> dict:
    return {**default_parameters(), "do_sample": False, "max_new_tokens": max_new_tokens}
