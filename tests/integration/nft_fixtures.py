"""Fixtures for the nftables integration tests; test modules import them explicitly:
`from tests.integration.nft_fixtures import nft_backend  # noqa: F401`."""
from __future__ import annotations

import contextlib
import subprocess
import uuid

import pytest

from platforms.nftables import NftablesBackend
from tests.harness import netns


@pytest.fixture
def nft_backend(lab):
    """The backend working in the lab's endpoint namespace, from this process."""
    backend = NftablesBackend(netns=lab.ns("endpoint"))
    try:
        yield backend
    finally:
        with contextlib.suppress(Exception):
            backend.clear()
        backend.close()


@contextlib.contextmanager
def bare_namespace():
    """A namespace with only loopback, removed afterwards (and its tables with it)."""
    ns = f"cdn-nft-{uuid.uuid4().hex[:6]}"
    netns.add(ns)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
