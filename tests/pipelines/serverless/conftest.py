"""Fixtures of the serverless tests: the loopback chat endpoint and the Azure REST simulation with the serverless
routes (tests/helpers/serverless_routes.py)."""

from __future__ import annotations

import pytest

from tests.helpers.serverless_routes import ServerlessRoutes
from tests.helpers.serverless_service import ChatServer


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


@pytest.fixture
def routes(azure_sim, chat_server):
    """The simulation with the serverless routes; a created endpoint answers at the loopback chat server."""
    azure_sim.job_statuses = ["Queued", "Running", "Completed"]
    return ServerlessRoutes(azure_sim, scoring_uri=chat_server.url).install()
