"""Auto-selection asks each backend whether it can run here and says why not; the
interface's defaults say plainly what a backend without a feature does."""
from __future__ import annotations

import sys

import pytest

import platforms
from platforms import BackendUnavailable, Support, auto_name, backend_class
from platforms.nftables import probe as nft_probe
from tests.unit.memory_backend import MemoryBackend


class Refusing(MemoryBackend):
    name = "refusing"

    @classmethod
    def is_supported(cls) -> Support:
        return Support(False, "the refusing kernel module is not loaded")


class Willing(MemoryBackend):
    name = "willing"

    @classmethod
    def is_supported(cls) -> Support:
        return Support(True, "willing answered")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setitem(platforms.BACKENDS, "refusing", f"{__name__}:Refusing")
    monkeypatch.setitem(platforms.BACKENDS, "willing", f"{__name__}:Willing")
    monkeypatch.setitem(platforms.BACKENDS, "missing", "tests.unit.no_such_module:X")
    return platforms.CANDIDATES


def test_auto_takes_the_first_backend_that_says_yes(registry, monkeypatch):
    monkeypatch.setitem(registry, "testos", ("missing", "refusing", "willing"))
    assert auto_name("testos") == "willing"


def test_auto_says_why_each_backend_cannot_run(registry, monkeypatch):
    monkeypatch.setitem(registry, "testos", ("missing", "refusing"))
    with pytest.raises(BackendUnavailable) as exc:
        auto_name("testos")
    assert "refusing: the refusing kernel module is not loaded" in str(exc.value)
    assert "backend 'missing' is not available" in str(exc.value)


def test_unknown_platform_and_unknown_name_are_named():
    with pytest.raises(BackendUnavailable, match="sunos5"):
        auto_name("sunos5")
    with pytest.raises(BackendUnavailable, match="iptables"):
        backend_class("iptables")


def test_an_explicit_backend_that_cannot_run_says_why(registry):
    with pytest.raises(BackendUnavailable, match="refusing kernel module"):
        backend_class("refusing")
    assert backend_class("refusing", check_support=False) is Refusing


@pytest.mark.skipif(sys.platform == "darwin", reason="pf can run on macOS")
def test_pf_is_not_supported_off_macos():
    support = backend_class("pf", check_support=False).is_supported()
    assert not support and "macOS" in support.reason


def test_nftables_is_not_supported_off_linux():
    support = nft_probe.is_supported("darwin")
    assert not support and "Linux" in support.reason


def test_interface_defaults():
    b = MemoryBackend()
    assert b.capabilities().change_events is False
    assert b.wait_for_change(0.0) is False
    assert b.probe() == ()
    assert not MemoryBackend.is_supported()
