"""Offline release (DESIGN §10): with a console key configured, `cordon release` needs a
release token signed by the console, bound to this agent, unexpired and unused. Checked
with no network at all: no broker and the endpoint's only link down."""
from __future__ import annotations

import pytest

from agent.channel import wire as fmt
from tests.harness.waits import wait_for_clock
from tests.integration.console_fixtures import lab  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def offline_agent(lab):
    from tests.harness.console import Broker, Console
    from tests.harness.driver import Agent
    console = Console(lab, Broker(lab)).keygen()     # the broker is never started
    agent = Agent(lab, config=console.agent_config("ep1"))
    try:
        agent.start()
        lab.run("endpoint", "ip", "link", "set", "eth0", "down")   # no network at all
        agent.isolate(strict=True, reason="IR-5")
        yield console, agent
    finally:
        agent.close()


def _token(console, agent_id: str, valid: str) -> str:
    p = console.run("release-token", agent_id, "--valid", valid)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_release_without_token_is_refused(offline_agent):
    console, agent = offline_agent
    agent.fail("release", exit="not permitted", match="release token")
    assert agent.status()["state"] == "isolated" and "cordon" in agent.nft_tables()


def test_token_for_another_agent_is_refused(offline_agent):
    console, agent = offline_agent
    agent.fail("release", "--token", _token(console, "ep2", "1h"), exit="not permitted", match="addressed to 'ep2'")
    assert agent.status()["state"] == "isolated"


def test_expired_token_is_refused(offline_agent):
    console, agent = offline_agent
    token = _token(console, "ep1", "1s")
    cmd = fmt.open_body(fmt.token_body(token), fmt.load_public_key(console.pub))
    until = fmt.parse_time(cmd["expires_at"], "expires_at").timestamp()
    wait_for_clock(until + 0.2)   # wait for the token's own expiry time to pass
    agent.fail("release", "--token", token, exit="not permitted", match="expired")
    assert agent.status()["state"] == "isolated"


def test_malformed_token_is_invalid_input(offline_agent):
    console, agent = offline_agent
    agent.fail("release", "--token", "not a token!", exit="invalid input", match="token")
    assert agent.status()["state"] == "isolated"


def test_valid_token_releases_once_even_across_a_restart(offline_agent):
    console, agent = offline_agent
    token = _token(console, "ep1", "24h")
    agent.succeed("release", "--token", token)
    st = agent.status()
    assert st["state"] == "normal" and "cordon" not in agent.nft_tables()
    assert [e["token_id"] for e in agent.audit_events("released")] == [
        fmt.open_body(fmt.token_body(token), fmt.load_public_key(console.pub))["id"]]
    agent.isolate(reason="again")
    agent.restart()                       # the used id is on disk, not only in memory
    agent.fail("release", "--token", token, exit="not permitted", match="already used")
    assert agent.status()["state"] == "isolated"
