"""Shared fixtures. Every test runs offline: hub access is disabled and sockets may only reach loopback."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from tests.helpers.chat_data import make_conversations, write_jsonl

_AZURE_CREDENTIAL_VARS = [
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
]


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes | str) and str(host) in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Fail any test that tries to reach beyond this machine, or could pick up Azure credentials."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    for name in _AZURE_CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise OSError(f"test tried to reach {address!r}: tests must stay offline")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)


@pytest.fixture
def chat_dir(tmp_path):
    """A folder with one 20-line valid chat JSONL file."""
    write_jsonl(tmp_path / "chats" / "chats.jsonl", make_conversations(20))
    return tmp_path / "chats"


@pytest.fixture(scope="session")
def tiny_phi3_dir(tmp_path_factory):
    """A tiny random Phi-3 (Phi3Config, fused qkv/gate_up) with a small tokenizer and Phi-3's chat template."""
    from tests.helpers.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_phi3"), arch="phi3")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (the architecture of the local SmolLM2 default) with a ChatML template."""
    from tests.helpers.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), arch="llama")
