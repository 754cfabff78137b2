"""The persist probe runs in the target namespace: a scratch table with flags
owner|persist is created, read back and deleted, and the result carries that evidence."""
from __future__ import annotations

import os

import pytest

from platforms.nftables import NftablesBackend
from platforms.nftables.probe import PERSIST, PROBE_TABLE
from tests.integration.nft_fixtures import bare_namespace
from tests.integration.nft_plans import nft, plan_a

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and network namespaces")]


def tables(ns: str) -> str:
    return nft(ns, "list", "tables").stdout


def test_probe_creates_reads_back_and_deletes_a_scratch_table():
    with bare_namespace() as ns:
        nft(ns, "add", "table", "inet", PROBE_TABLE)  # as if a probe had died halfway
        backend = NftablesBackend(netns=ns)
        try:
            [probe] = backend.probe()
            assert probe.name == PERSIST
            # Linux >= 6.9 has persist; this lab's kernel is newer (the evidence says which).
            assert probe.present, probe.evidence
            assert "read back flags owner|persist" in probe.evidence and "deleted" in probe.evidence
            assert PROBE_TABLE not in tables(ns)
            assert backend.probe() is backend.probe()  # probed once, then recorded
            backend.apply(plan_a())
            assert backend.read_back().details["table_flags"] == ["owner", "persist"]
        finally:
            backend.clear()
            backend.close()
        assert tables(ns).strip() == ""
