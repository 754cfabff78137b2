"""The story steps, reusable by tests and by the demo. Each step acts through the real
CLI, then probes the whole matrix and compares it with what `expect.Model` says should
be in force; transitions run under a ProbeLoop that records leaks and losses.

    story = Story(lab, agent, policies=[V1, V2])
    assert story.baseline().ok
    story.agent.policy_set(V1); story.isolate().ok ...
"""
from __future__ import annotations

import contextlib
import copy
import signal
import time
from dataclasses import dataclass, field

from .errors import CordonWrong, HarnessError
from .expect import Model, probe_set
from .probe import ALLOWED, BLOCKED, LoopReport, ProbeLoop
from .table import Comparison
from .waits import wait_until

LOOP_PROBES = 8  # per kind; enough to catch a gap, small enough to stay cheap


@dataclass
class Step:
    title: str
    explanation: str
    comparison: Comparison
    loop: LoopReport | None = None
    problems: list[str] = field(default_factory=list)  # checks other than the table
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.comparison.incorrect == 0 and not self.problems and (self.loop is None or self.loop.clean)

    def render(self, lab=None) -> str:
        out = [f"### {self.title}: {self.explanation}", self.comparison.render(lab)]
        if self.loop is not None:
            out.append(f"during the transition: {self.loop.summary()}")
        out += [f"  PROBLEM {p}" for p in self.problems]
        return "\n".join(out)


class Story:
    def __init__(self, lab, agent, policies=(), families=(4, 6), timeout: float = 1.0, skip_ports=()) -> None:
        self.lab, self.agent, self.timeout = lab, agent, timeout
        self.model = Model(agent.config)
        self.probes = probe_set(lab, agent.config, list(policies), families, skip_ports)
        lab.listen({p.port for p in self.probes if p.port})
        self.steps: list[Step] = []

    # --- checking --------------------------------------------------------------------
    def check(self, title: str, explanation: str = "", loop: LoopReport | None = None,
              problems=(), started: float | None = None, timeout: float | None = None) -> Step:
        results = self.lab.probe_all(self.probes, timeout=timeout or self.timeout)
        cmp = Comparison(self.model.expected(self.lab, self.probes), results, title)
        step = Step(title, explanation, cmp, loop, list(problems) + self.status_problems())
        step.seconds = round(time.monotonic() - started, 2) if started else 0.0
        self.steps.append(step)
        return step

    def status_problems(self) -> list[str]:
        """Compare `cordon status --json` with the model (when the agent runs)."""
        if not self.agent.alive:
            return []
        st, m, out = self.agent.status(), self.model, []
        want = {"state": m.state, "mode": m.mode,
                "policy.stored_version": (m.stored or {}).get("version")}
        if m.state == "isolated" and m.mode == "standard":
            want["policy.enforced_version"] = (m.enforced or {}).get("version")
        if m.state == "normal":
            want["policy.enforced_version"] = None
        for key, value in want.items():
            got = st
            for part in key.split("."):
                got = (got or {}).get(part)
            if got != value:
                out.append(f"status {key} = {got!r}, expected {value!r}")
        if (st.get("backend") or {}).get("enforcing") is not True:
            out.append(f"status backend.enforcing = {(st.get('backend') or {}).get('enforcing')!r}")
        return out

    def _step(self, title: str, explanation: str, cli, change, timeout: float | None = None) -> Step:
        """Run `cli` under a probe loop over flows that must pass (or stay blocked) both
        before and after it according to the model; `change(model)` is what it should do."""
        t0 = time.monotonic()
        future = copy.deepcopy(self.model)
        change(future)
        before, after = self.model.expected(self.lab, self.probes), future.expected(self.lab, self.probes)
        both = lambda v: [p for p in self.probes if before[p] == v and after[p] == v and not p.sport]
        # From normal the endpoint has no table, so this step brings its first rules and
        # with them the start of connection tracking (first_rule.py).
        first = self.agent.host if self.model.state == "normal" and future.state == "isolated" else None
        with ProbeLoop(self.lab, must_pass=_spread(both(ALLOWED)), must_block=_spread(both(BLOCKED)),
                       first_rule_in=first) as loop:
            cli()
        self.model = future
        return self.check(title, explanation, loop.report, started=t0, timeout=timeout)

    # --- the steps -------------------------------------------------------------------
    def baseline(self) -> Step:
        return self.check("normal", "no isolation: every probe passes, IPv4 and IPv6, both ways and forwarded",
                          started=time.monotonic())

    def isolate(self, strict: bool = False, reason: str = "harness") -> Step:
        mode = "strict" if strict else "standard"
        what = ("vendor and DNS only, no exceptions" if strict else
                "vendor, DNS and the enforced policy's active exceptions only")
        return self._step(f"isolated ({mode})", f"`cordon isolate{' --strict' if strict else ''}`: {what}",
                          lambda: self.agent.isolate(strict=strict, reason=reason),
                          lambda m: m.isolate(strict=strict))

    def strict(self) -> Step:
        return self.isolate(strict=True)

    def policy_update(self, doc: dict) -> Step:
        live = self.model.sensor_type == "endpoint_sensor"
        v = doc.get("version", "next")
        if self.model.state != "isolated":
            how = "stored only (not isolated)"
        elif live:
            how = "endpoint_sensor: enforced at once, atomically"
        else:
            how = "security_agent: stored as pending until the next isolate"
        return self._step(f"policy v{v}", f"`cordon policy set`: {how}",
                          lambda: self.agent.policy_set(doc), lambda m: m.policy_set(doc))

    def release(self, reason: str = "harness") -> Step:
        """Isolation drops all IPv6 but loopback, neighbour discovery included (DESIGN
        §6), so the endpoint's and its neighbours' IPv6 neighbour entries may be mid-way
        through failing when isolation ends. The first packet of a flow then waits for
        the kernel to resolve its next hop again: up to a retransmission interval for a
        probe in flight, (mcast_solicit + 1) of them if the entry fails first, on each of
        the two hops of a forwarded flow. The check after release gives each probe that
        long (read from the endpoint's per-device neighbour settings); a flow still blocked
        by then is wrong."""
        step = self._step("released", "`cordon release`: the matrix equals the one before isolation",
                          lambda: self.agent.release(reason=reason), lambda m: m.release(),
                          timeout=max(self.timeout, self._neighbour_resolution_s()))
        if "cordon" in self.agent.nft_tables():
            step.problems.append("a cordon table is still installed after release")
        return step

    def _neighbour_resolution_s(self) -> float:
        """Twice the longest IPv6 neighbour resolution on any of the endpoint's devices.
        The values are per device: a namespace other than the first has no
        net.ipv6.neigh.default, so they are read from /proc/sys/net/ipv6/neigh/<dev>."""
        base = "/proc/sys/net/ipv6/neigh"
        devs = [d for d in self.lab.run(self.agent.host, "ls", base).stdout.split()
                if d not in ("lo", "default")]
        if not devs:
            raise HarnessError(f"{self.agent.host} has no IPv6 neighbour settings in {base}")

        def read(dev: str, name: str) -> int:
            return int(self.lab.run(self.agent.host, "cat", f"{base}/{dev}/{name}").stdout)
        return max(2 * (read(d, "mcast_solicit") + 1) * read(d, "retrans_time_ms") / 1000
                   for d in devs)

    def kill_restart(self) -> Step:
        """kill -9 while isolated: rules stay, status says 'not running' (exit 3); after a
        restart the same state is adopted. Watched by a probe loop the whole time."""
        t0 = time.monotonic()
        problems = []
        exp = self.model.expected(self.lab, self.probes)
        keep = lambda v: _spread([p for p in self.probes if exp[p] == v and not p.sport])
        with ProbeLoop(self.lab, must_pass=keep(ALLOWED), must_block=keep(BLOCKED)) as loop:
            self.agent.kill(signal.SIGKILL)
            down = self.agent.status()
            if down["_exit"] != 3:
                problems.append(f"status exit {down['_exit']} while the agent is down, expected 3")
            if (self.model.state == "isolated") != ("cordon" in self.agent.nft_tables()):
                problems.append("after kill -9 the cordon table is "
                                + ("gone" if self.model.state == "isolated" else "present"))
            down_results = self.lab.probe_all(self.probes, timeout=self.timeout)
            down_cmp = Comparison(exp, down_results, "agent down")
            problems += [f"while down: {r.probe.label()} expected {r.expected}, observed "
                         f"{r.result.verdict}" for r in down_cmp.mismatches]
            self.agent.restart()
        return self.check("kill -9 + restart", "SIGKILL the agent: isolation stays in force; the "
                          "restarted agent adopts it", loop.report, problems, started=t0)

    def tamper(self, wait: float = 1.5) -> Step:
        """`nft flush ruleset` and `nft delete table inet cordon` in the endpoint while the
        agent runs: isolation must hold (owner flag) or be restored with a
        `tamper_detected` audit event (waited for `wait` s x load; the probe loop then
        watches `wait` s worth of rounds more)."""
        t0 = time.monotonic()
        problems = []
        exp = self.model.expected(self.lab, self.probes)
        keep = lambda v: _spread([p for p in self.probes if exp[p] == v and not p.sport])
        events_before = len(self.agent.audit_events("tamper_detected"))
        with ProbeLoop(self.lab, must_pass=keep(ALLOWED), must_block=keep(BLOCKED)) as loop:
            self.lab.run(self.agent.host, "nft", "flush", "ruleset", check=False)
            self.lab.run(self.agent.host, "nft", "delete", "table", "inet", "cordon", check=False)
            vanished = "cordon" not in self.agent.nft_tables()
            if vanished:
                with contextlib.suppress(CordonWrong):  # not repaired: named as a problem below
                    wait_until(lambda: len(self.agent.audit_events("tamper_detected")) > events_before
                               and "cordon" in self.agent.nft_tables(), wait, "tamper repaired", error=CordonWrong)
            loop.wait_rounds(max(1, round(wait / loop.interval)))
        if vanished and len(self.agent.audit_events("tamper_detected")) <= events_before:
            problems.append("the table vanished but no tamper_detected audit event followed")
        if self.model.state == "isolated" and "cordon" not in self.agent.nft_tables():
            problems.append(f"no cordon table {wait} s (x load) after tampering")
        step = self.check("tamper", "root runs `nft flush ruleset` and `nft delete table inet cordon`: "
                          "isolation holds", loop.report, problems, started=t0)
        return step


def _spread(probes, n: int = LOOP_PROBES):
    """Up to n probes spread across the list (so both families and directions appear)."""
    if len(probes) <= n:
        return list(probes)
    return [probes[i * len(probes) // n] for i in range(n)]
