"""Fixtures for integration tests on the netns harness: `lab` (a fresh lab with responders)
and `agent` (the real `cordon run` inside the lab's endpoint). Root-marked tests are
skipped, not failed, when not running as root."""
from __future__ import annotations

import os
import shutil

import pytest


def _why_not_root() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    return None


def pytest_collection_modifyitems(config, items):
    why = _why_not_root()
    if why:
        for item in items:
            if "root" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=why))


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
