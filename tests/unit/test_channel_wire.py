"""The console wire format (DESIGN §10) and envelope checks, against the contract's own
definitions: canon = sorted keys, separators (",", ":"), UTF-8; Ed25519 over canon(cmd)."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.signing import SigningKey

from agent.channel import wire
from agent.channel.replay import ReplayGuard
from agent.channel.verify import Rejected, check_envelope

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_signature_is_over_the_contracts_canonical_form():
    key = SigningKey.generate()
    cmd = wire.new_command("ep1", "isolate", {"strict": True, "reason": "é"}, timedelta(hours=1), now=NOW)
    body = json.loads(wire.sign(cmd, key))
    canon = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # checked with a second implementation (cryptography), not with the one the code uses
    Ed25519PublicKey.from_public_bytes(bytes(key.verify_key)).verify(base64.b64decode(body["sig"]), canon)
    assert cmd["issued_at"] == "2026-01-02T03:04:05Z" and cmd["expires_at"] == "2026-01-02T04:04:05Z"
    assert wire.open_body(wire.sign(cmd, key), key.verify_key) == cmd


def test_a_body_signed_by_another_implementation_opens(tmp_path):
    """Other tools speak the wire format: a key pair and signature made with `cryptography`."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    other = Ed25519PrivateKey.generate()
    (tmp_path / "c.pub").write_text(base64.b64encode(other.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode())
    cmd = wire.new_command("ep1", "release", {}, timedelta(hours=1), now=NOW)
    canon = json.dumps(cmd, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body = json.dumps({"cmd": cmd, "sig": base64.b64encode(other.sign(canon)).decode()}).encode()
    assert wire.open_body(body, wire.load_public_key(str(tmp_path / "c.pub"))) == cmd
    with pytest.raises(wire.WireError, match="does not verify"):
        wire.open_body(body.replace(b"release", b"isolate"), wire.load_public_key(str(tmp_path / "c.pub")))


def test_key_files_are_base64_of_32_bytes(tmp_path):
    pub = wire.write_keypair(str(tmp_path / "c.key"), str(tmp_path / "c.pub"))
    assert len(base64.b64decode((tmp_path / "c.key").read_text())) == 32
    assert len(base64.b64decode(pub)) == 32
    assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        wire.write_keypair(str(tmp_path / "c.key"), str(tmp_path / "d.pub"))
    (tmp_path / "bad.pub").write_text(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(wire.WireError, match="32 bytes"):
        wire.load_public_key(str(tmp_path / "bad.pub"))


def test_token_is_base64url_of_a_signed_release():
    key = SigningKey.generate()
    token = wire.make_token("ep1", timedelta(hours=24), key)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    cmd = wire.open_body(wire.token_body(token), key.verify_key)
    assert cmd["action"] == "release" and cmd["args"] == {"token": True} and cmd["agent"] == "ep1"


@pytest.mark.parametrize("change,code,words", [
    ({"agent": "ep2"}, "not_permitted", "addressed to 'ep2'"),
    ({"expires_at": "2026-01-02T03:00:00Z", "issued_at": "2026-01-02T02:00:00Z"}, "not_permitted", "expired"),
    ({"issued_at": "2026-01-02T03:10:00Z", "expires_at": "2026-01-02T05:00:00Z"}, "not_permitted", "future"),
    ({"issued_at": "2026-01-02T03:08:00Z", "expires_at": "2026-01-02T05:00:00Z"}, None, ""),  # within skew
    ({"v": 2}, "invalid", "cmd.v"),
    ({"action": "format_disk"}, "invalid", "cmd.action"),
    ({"args": {"strict": "yes"}}, "invalid", "args.strict"),
    ({"issued_at": "2026-01-02 03:04:05"}, "invalid", "cmd.issued_at"),
])
def test_envelope_checks(change, code, words):
    cmd = wire.new_command("ep1", "isolate", {}, timedelta(hours=1), now=NOW) | change
    if code is None:
        assert check_envelope(cmd, "ep1", NOW, broadcast=False).action == "isolate"
        return
    with pytest.raises(Rejected) as exc:
        check_envelope(cmd, "ep1", NOW, broadcast=False)
    assert exc.value.code == code and words in exc.value.reason


def test_broadcast_subject_needs_agent_all():
    cmd = wire.new_command("all", "isolate", {}, timedelta(hours=1), now=NOW)
    assert check_envelope(cmd, "ep1", NOW, broadcast=True).agent == "all"
    with pytest.raises(Rejected):
        check_envelope(cmd, "ep1", NOW, broadcast=False)


def test_replay_guard_survives_a_restart(tmp_path):
    g = ReplayGuard(tmp_path)
    g.record("abc", (datetime.now(timezone.utc) + timedelta(hours=1)).timestamp())
    assert ReplayGuard(tmp_path).seen("abc") and not ReplayGuard(tmp_path).seen("abd")


def test_replay_guard_keeps_the_applied_sequence_per_stream(tmp_path):
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).timestamp()
    g = ReplayGuard(tmp_path)
    g.bind_stream("2026-01-01T00:00:00Z", 10)
    g.record("a", later, 7)
    g.record("b", later, 5)                     # never lowers it
    g = ReplayGuard(tmp_path)                   # after a restart
    assert g.applied_seq == 7
    g.bind_stream("2026-01-01T00:00:00Z", 9)    # the same stream
    assert g.applied_seq == 7
    g.bind_stream("2026-02-02T00:00:00Z", 900)  # a stream created anew numbers from 1
    assert g.applied_seq == 0 and g.seen("a")
    g.record("c", later, 3)
    assert ReplayGuard(tmp_path).applied_seq == 3
    g.bind_stream("2026-02-02T00:00:00Z", 2)    # same name and time, but it never reached 3
    assert g.applied_seq == 0


def test_replay_guard_reads_the_file_written_before_sequences(tmp_path):
    import json
    (tmp_path / "console-seen.json").write_text(json.dumps({"abc": 4102444800.0}))
    g = ReplayGuard(tmp_path)
    assert g.seen("abc") and g.applied_seq == 0


@pytest.mark.parametrize("doc", ['{"ids": {}, "stream": null, "applied_seq": -1}',
                                 '{"ids": {}, "stream": 5, "applied_seq": 1}', '[1]', '{"ids": []}'])
def test_replay_guard_refuses_a_corrupt_file(tmp_path, doc):
    (tmp_path / "console-seen.json").write_text(doc)
    with pytest.raises(RuntimeError, match="corrupt"):
        ReplayGuard(tmp_path)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800)])
def test_durations(text, seconds):
    assert wire.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["0h", "1y", "-1h", "h", ""])
def test_bad_durations(text):
    with pytest.raises(wire.WireError):
        wire.parse_duration(text)


def test_console_config_section():
    from agent.config import parse_config
    from agent.errors import InvalidInput
    vendor = {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443, 4222"}]}
    c = parse_config({"vendor": vendor, "console": {"servers": ["nats://198.51.100.10:4222"], "agent_id": "ep-1"}})
    assert c.console.public_key == "/etc/cordon/console.pub"
    for bad, words in ((["nats://198.51.100.11:4222"], "not covered"), (["nats://console.example:4222"], "IPv4"),
                       ([], "at least 1")):
        with pytest.raises(InvalidInput, match=words):
            parse_config({"vendor": vendor, "console": {"servers": bad}})
    with pytest.raises(InvalidInput, match="console.agent_id"):
        parse_config({"vendor": vendor, "console": {"servers": ["nats://198.51.100.10:4222"], "agent_id": "a b"}})
    with pytest.raises(InvalidInput, match="console.typo"):
        parse_config({"vendor": vendor, "console": {"servers": ["nats://198.51.100.10:4222"], "typo": 1}})
