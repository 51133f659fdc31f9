"""chatft.serving.settings: the shipped serving.json is consistent, and bad values are refused naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatft.serving.settings import load_serving_settings

SERVING_FILE = Path(__file__).resolve().parents[2] / "components" / "deploy_endpoint" / "serving.json"


def test_serving_settings_ship_consistent():
    settings = load_serving_settings(SERVING_FILE)
    assert settings["threads"] > settings["max_concurrent_requests_per_instance"] >= settings["max_batch_size"]
    assert settings["request_timeout_ms"] > 2 * settings["generation_timeout_s"] * 1000


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"threads": 8}, "threads must exceed max_concurrent_requests_per_instance"),
        ({"max_batch_size": 9}, "max_batch_size exceeds max_concurrent_requests_per_instance"),
        ({"request_timeout_ms": 60000}, "request_timeout_ms must exceed 2 x generation_timeout_s"),
        ({"threads": "10"}, 'threads must be an integer >= 1, got "10"'),
        ({"batch_wait_ms": -1}, "batch_wait_ms must be a number >= 0"),
        ({"max_batch": 8}, "unknown key(s) ['max_batch']"),
    ],
)
def test_serving_settings_refuse_bad_values(tmp_path, change, expected):
    settings = {**json.loads(SERVING_FILE.read_text()), **change}
    path = tmp_path / "serving.json"
    path.write_text(json.dumps(settings))
    with pytest.raises(ValueError) as caught:
        load_serving_settings(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)
