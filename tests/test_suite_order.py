"""The suite's own scheduling (tests/conftest.py): the measured durations name real test files, and collection
hands the modules out longest first without reordering the tests inside a module."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tests import conftest

REPO = Path(__file__).resolve().parents[1]


def test_every_module_in_durations_json_exists():
    seconds = json.loads(conftest.DURATIONS_FILE.read_text())["seconds"]
    missing = [module for module in seconds if not (REPO / module).is_file()]
    assert not missing, f"renamed or removed; run `make test ARGS=--record-durations`: {missing}"
    assert list(seconds.values()) == sorted(seconds.values(), reverse=True)


def test_collection_puts_the_longest_module_first_and_keeps_the_order_within_each():
    seconds = json.loads(conftest.DURATIONS_FILE.read_text())["seconds"]
    longest, shorter = list(seconds)[0], [module for module, s in seconds.items() if s > 0][-1]
    collected = [("tests/unmeasured.py", "a"), (shorter, "b1"), (longest, "c1"), (shorter, "b2"), (longest, "c2")]
    items = [SimpleNamespace(nodeid=f"{module}::{name}") for module, name in collected]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid.split("::")[1] for i in items] == ["c1", "c2", "b1", "b2", "a"]
