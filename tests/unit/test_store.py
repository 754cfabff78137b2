import os
import stat

import pytest

from agent.policy import validate_policy
from agent.store import AgentState, StateCorrupt, Store


def test_missing_file_is_fresh_normal(tmp_path):
    assert Store(tmp_path / "new").load() == AgentState()


def test_save_load_round_trip_and_permissions(tmp_path):
    s = Store(tmp_path / "d")
    p = validate_policy({"version": 3, "enabled": True,
                         "outbound": [{"protocol": "tcp", "address": "203.0.113.20", "ports": "any"}]})
    state = AgentState(state="isolated", mode="standard", since="2026-11-21T10:00:00+00:00",
                       reason="case 7", stored_policy=p, isolation_policy=p)
    s.save(state)
    assert s.load() == state
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o644
    assert [f.name for f in s.dir.iterdir()] == ["state.json"]  # no temp file left behind


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    s = Store(tmp_path)
    s.save(AgentState(state="isolated", mode="strict"))
    before = s.path.read_bytes()

    def boom(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        s.save(AgentState())
    monkeypatch.undo()
    assert s.path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("content", [b"", b"{", b"null", b'{"format": 1, "state": "paused"}', b"\xff"])
def test_corrupt_files_raise(tmp_path, content):
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(StateCorrupt, match="corrupt"):
        Store(tmp_path).load()


def test_quarantine_keeps_the_bad_file(tmp_path):
    (tmp_path / "state.json").write_bytes(b"junk")
    aside = Store(tmp_path).quarantine()
    assert aside.read_bytes() == b"junk" and not (tmp_path / "state.json").exists()
