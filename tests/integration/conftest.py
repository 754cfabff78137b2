"""Fixtures for integration tests on the netns harness: `lab` (a fresh lab with responders)
and `agent` (the real `cordon run` inside the lab's endpoint). Root-marked tests are
skipped when not root outside CI, and fail the run in CI (tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture
def lab():
    from tests.harness import Lab
    with Lab() as lab:
        yield lab


@pytest.fixture
def agent_config():
    """Override in a test module (or parametrize) to change the agent's config."""
    return {}


@pytest.fixture
def agent(lab, agent_config):
    from tests.harness.driver import Agent
    a = Agent(lab, **agent_config)
    try:
        a.start()
        yield a
    finally:
        a.close()
