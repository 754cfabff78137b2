"""Bad input on the console channel (DESIGN §10): each case is rejected, acked (the
broker holds nothing unacked for the agent), audited, answered with a result event, and
changes nothing (status, and the ruleset as `nft -j` lists it). One test per case; they
share one lab, broker and isolated agent (each case must leave it as it found it)."""
from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from nacl.signing import SigningKey

from agent.channel import wire as fmt
from tests.integration.console_fixtures import TOPOLOGY, V1

pytestmark = [pytest.mark.root, pytest.mark.slow]
SUBJECT = "cordon.v1.cmd.ep1"


@pytest.fixture(scope="module")
def setup():
    from tests.harness import Lab
    from tests.harness.console import Broker, Console, Wire
    from tests.harness.driver import Agent
    with Lab(topology=TOPOLOGY) as lab:
        broker = Broker(lab).start()
        console = Console(lab, broker).keygen()
        agent = Agent(lab, config=console.agent_config("ep1"))
        try:
            agent.start()
            console.wait_subscribed(agent)
            with Wire(lab, broker) as w:
                key = fmt.load_private_key(console.key)
                for action, args in (("set_policy", {"policy": V1}), ("isolate", {"reason": "IR-9"})):
                    seq = w.publish(SUBJECT, fmt.sign(fmt.new_command("ep1", action, args, timedelta(hours=1)), key))
                    assert w.event(seq=seq)["outcome"] == "applied"
                yield lab, agent, w, key
        finally:
            agent.close()
            broker.kill()


def _snapshot(lab, agent) -> tuple:
    """Status and the table as nft lists it, but for the keys in its hot sets: packets
    put them there and they lapse by themselves (platforms/nftables/shape.HOT_SETS), so
    they are traffic, not something a command could have changed."""
    st = agent.status()
    doc = json.loads(lab.run(agent.host, "nft", "-j", "list", "table", "inet", "cordon").stdout)
    for obj in doc["nftables"]:
        if "set" in obj and obj["set"]["name"].rsplit("_", 1)[0].endswith("_hot"):
            obj["set"].pop("elem", None)
    return (st["state"], st["mode"], st["reason"], st["policy"], st["backend"]["enforcing"]), doc


def _reject(setup, body: bytes, code: str, words: str) -> dict:
    lab, agent, w, _ = setup
    before = _snapshot(lab, agent)
    seq = w.publish(SUBJECT, body)
    ev = w.event(seq=seq)
    assert ev["outcome"] == "rejected" and ev["code"] == code, ev
    assert words in ev["reason"], ev
    audited = [e for e in agent.audit_events("console_command_rejected") if e.get("seq") == seq]
    assert len(audited) == 1 and words in audited[0]["reason"], audited
    c = w.consumer("cordon-ep1")
    assert c["ack_floor"] >= seq and c["num_ack_pending"] == 0 and c["num_pending"] == 0, c
    assert _snapshot(lab, agent) == before, "a rejected command changed the agent"
    return ev


def _cmd(action="isolate", args=None, agent="ep1", issued=timedelta(0), valid=timedelta(hours=1)):
    now = fmt.utcnow() + issued
    return fmt.new_command(agent, action, {"strict": True} if args is None else args, valid, now=now)


def test_wrong_signature(setup):
    key = setup[3]
    msg = json.loads(fmt.sign(_cmd(), key))
    sig = bytearray(base64.b64decode(msg["sig"]))
    sig[0] ^= 0xFF
    msg["sig"] = base64.b64encode(bytes(sig)).decode()
    _reject(setup, json.dumps(msg).encode(), "not_permitted", "signature does not verify")


def test_signature_valid_for_another_agent(setup):
    _reject(setup, fmt.sign(_cmd(agent="ep9"), setup[3]), "not_permitted", "addressed to 'ep9'")


def test_expired(setup):
    _reject(setup, fmt.sign(_cmd(issued=-timedelta(hours=2), valid=timedelta(hours=1)), setup[3]),
            "not_permitted", "expired")


def test_issued_in_the_future_beyond_skew(setup):
    _reject(setup, fmt.sign(_cmd(issued=timedelta(minutes=10)), setup[3]), "not_permitted", "in the future")


def test_replayed_id(setup):
    lab, agent, w, key = setup
    body = fmt.sign(_cmd(args={"reason": "IR-9"}), key)     # the same state: applying it changes nothing
    seq = w.publish(SUBJECT, body)
    assert w.event(seq=seq)["outcome"] == "applied"
    _reject(setup, body, "not_permitted", "already used")


def test_stale_policy_version(setup):
    _reject(setup, fmt.sign(_cmd("set_policy", {"policy": dict(V1, enabled=False)}), setup[3]),
            "invalid", "stale")


def test_oversized(setup):
    body = fmt.sign(_cmd(args={"reason": "x" * (fmt.MAX_BODY_BYTES + 1)}), setup[3])
    _reject(setup, body, "invalid", "larger than")


def test_malformed_json(setup):
    ev = _reject(setup, b'{"cmd": {"v": 1, "id": ', "invalid", "not valid UTF-8 JSON")
    assert ev["id"] is None


def test_signed_by_a_key_that_is_not_pinned(setup):
    _reject(setup, fmt.sign(_cmd(), SigningKey.generate()), "not_permitted", "signature does not verify")
