"""The demo's story told through the console (DESIGN §10): a real nats-server on the
vendor host, `cordon-console` there, two agents side by side (ep1 `endpoint_sensor` in
the endpoint, whose truth tables are printed; ep2 `security_agent` in endpoint2, checked
through `fleet`). Each step is a Story step: a probe loop during the change, the full
table after it, and the extra checks as problems."""
from __future__ import annotations

import json
import os

from .console import NATS_PORT, Broker, Console
from .driver import Agent
from .lab import DEFAULT_TOPOLOGY, Host
from .scenarios import Story

TOPOLOGY = DEFAULT_TOPOLOGY + (Host("endpoint2", "192.0.2.18/29", "2001:db8:3::18/64"),)


class ConsoleStory:
    def __init__(self, lab, policies, say=print) -> None:
        self.lab, self.policies, self.say = lab, policies, say
        self.broker = Broker(lab).start()
        self.console = Console(lab, self.broker).keygen()
        self.ep1 = Agent(lab, config=self.console.agent_config("ep1", "endpoint_sensor"))
        self.ep2 = Agent(lab, config=self.console.agent_config("ep2", "security_agent"), host="endpoint2")
        self.agents = [self.ep1, self.ep2]

    def start(self) -> Story:
        for a in self.agents:
            a.start()
        for a in self.agents:
            self.console.wait_subscribed(a)
        self.story = Story(self.lab, self.ep1, policies=self.policies, skip_ports=(NATS_PORT,))
        # endpoint2 is isolated by its own agent: it is no peer that proves ep1's tables
        self.story.probes = [p for p in self.story.probes if self.ep2.host not in (p.src, p.dst)]
        return self.story

    def close(self) -> None:
        for a in self.agents:
            a.close()
        self.broker.kill()

    # --- console commands, each checked: exit 0 and one `applied` line per agent -----
    def _console(self, problems: list, *args, expect=("ep1", "ep2")):
        p = self.console.run(*args)
        self.say(f"  $ cordon-console {' '.join(args)}\n" + "".join(f"    {l}\n" for l in p.stdout.splitlines()))
        if p.returncode != 0:
            problems.append(f"cordon-console {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[:300]}")
        for a in expect:
            if f"{a}: applied" not in p.stdout:
                problems.append(f"cordon-console {' '.join(args)}: no `applied` ack from {a}")
        return p

    def _publish(self, problems, doc):
        path = os.path.join(self.lab.rundir, f"policy-v{doc['version']}.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        self._console(problems, "policy", "publish", path)

    def _fleet_is(self, problems, agent, stored, enforced, pending, state=None):
        row = self.console.fleet().get(agent, {})
        got = (row.get("stored_version"), row.get("enforced_version"), row.get("pending_version"))
        if got != (stored, enforced, pending) or (state and row.get("state") != state):
            problems.append(f"fleet {agent}: stored/enforced/pending {got}, state {row.get('state')}; expected "
                            f"{(stored, enforced, pending)}{', ' + state if state else ''}")

    def _step(self, title, explanation, act, change, after=None):
        problems: list[str] = []
        step = self.story._step(title, explanation, lambda: act(problems), change)
        if after:
            after(problems)
        step.problems += problems
        return step

    # --- the steps -------------------------------------------------------------------
    def steps(self):
        v1, v2 = self.policies
        s = self.story
        return [
            ("baseline", s.baseline),
            ("policy v1 from the console", lambda: self._step(
                "policy v1 (console, to all)", "`cordon-console policy publish`: stored only (not isolated)",
                lambda pr: self._publish(pr, v1), lambda m: m.policy_set(v1))),
            ("isolate all from the console", lambda: self._step(
                "isolated (console, vendor channel)", "`cordon-console isolate all`: vendor, DNS and v1's exceptions",
                lambda pr: self._console(pr, "isolate", "all", "--reason", "IR-2026-17"), lambda m: m.isolate(),
                lambda pr: self._fleet_is(pr, "ep2", 1, 1, None, "isolated"))),
            ("live policy v2 on both sensor types", lambda: self._step(
                "policy v2 (console, to all)", "endpoint_sensor ep1 enforces at once; security_agent ep2 keeps v1, "
                "v2 pending until its next isolate", lambda pr: self._publish(pr, v2), lambda m: m.policy_set(v2),
                lambda pr: (self._fleet_is(pr, "ep1", 2, 2, None), self._fleet_is(pr, "ep2", 2, 1, 2)))),
            ("strict from the console", lambda: self._step(
                "isolated (strict, console)", "`cordon-console isolate ep1 --strict`: vendor and DNS only",
                lambda pr: self._console(pr, "isolate", "ep1", "--strict", expect=("ep1",)),
                lambda m: m.isolate(strict=True))),
            ("offline release with a token", self._offline_release),
            ("release all from the console", lambda: self._step(
                "released (console)", "`cordon-console release all`: both agents normal again",
                lambda pr: self._console(pr, "release", "all"), lambda m: m.release(),
                lambda pr: (self._fleet_is(pr, "ep2", 2, None, None, "normal"),
                            self._no_table(pr)))),
        ]

    def _no_table(self, problems):
        for a in self.agents:
            if "cordon" in a.nft_tables():
                problems.append(f"a cordon table is still installed on {a.host} after release")

    def _offline_release(self):
        def act(problems):
            self.broker.kill()    # no console at all: the token is checked on the host
            p = self.ep1.cli("release", check=False)
            self.say(f"  $ cordon release            -> exit {p.returncode}: {p.stderr.strip()[:120]}\n")
            if p.returncode != 4:
                problems.append(f"`cordon release` without a token exited {p.returncode}, expected 4")
            token = self.console.run("release-token", "ep1", "--valid", "1h").stdout.strip()
            p = self.ep1.cli("release", "--token", token, check=False)
            self.say(f"  $ cordon release --token {token[:16]}...  -> exit {p.returncode}\n")
            if p.returncode != 0:
                problems.append(f"`cordon release --token` exited {p.returncode}: {p.stderr.strip()[:200]}")
            self.broker.start()
            for a in self.agents:   # back on the vendor channel before the next step
                a.wait_for_event("console_reconnected")
        return self._step("released (offline token)", "broker stopped; `cordon release` refused without a "
                          "token (exit 4); `cordon release --token` from `cordon-console release-token` works",
                          act, lambda m: m.release())
