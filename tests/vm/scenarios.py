"""The VM tier's scenarios: the harness's Story (same expected model, same probe set, same
tables) on a booted Debian guest running the installed agent, plus what only a machine
can show: boot, reboot, systemd stop/kill/watchdog, a package upgrade, purge.

Every transition runs under two watches:
- a ProbeLoop from the peers into the guest (a nonce that reaches the guest's responder, or
  a round trip, on a flow that must stay blocked is a leak);
- WireWatch: every IP/IPv6 packet the guest puts on its NIC, checked against the flows the
  model allows - this also covers the part of a boot when nothing in the guest answers.
"""
from __future__ import annotations

import copy
import json
import time

from tests.harness.lab import load_factor
from tests.harness.probe import ALLOWED, BLOCKED, ProbeLoop
from tests.harness.scenarios import Step, Story, _spread

from .lab import GUEST
from .probe import guest_round_trips
from .wire import WireWatch


class VmStory(Story):
    def __init__(self, lab, agent, installer, policies=(), timeout: float = 2.0) -> None:
        super().__init__(lab, agent, policies=policies, timeout=timeout)
        self.installer = installer
        self.figures: dict[str, float] = {}
        self._watch_no = 0

    # --- watches ---------------------------------------------------------------------
    def _loop(self, before, after, powered_off: bool = False) -> ProbeLoop:
        """Peer-to-guest flows that must pass (or stay blocked) before and after; the guest's
        own outbound flows are judged on the wire. While the guest is `powered_off` (a
        reboot) nothing can answer, so only the flows that must stay blocked are watched,
        and a receiver that could not say whether a nonce arrived is asked again once it is
        back (its responder keeps what it received across the boot): a leak still fails the
        step; vendor reachability is checked once the agent is up."""
        both = lambda v: [p for p in self.probes if p.src != GUEST and not p.sport
                          and before[p] == v and after[p] == v]
        must_pass = [] if powered_off else _spread(both(ALLOWED))
        return ProbeLoop(self.lab, must_pass=must_pass, must_block=_spread(both(BLOCKED)),
                         interval=0.25, timeout=2.0 * load_factor(), ask_again=powered_off)

    def _watched(self, title: str, explanation: str, action, change=None, powered_off=False,
                 timeout: float | None = None, window: dict | None = None) -> Step:
        """Run `action()` (which returns a list of problems) under the loop and the wire
        watch, then check the whole matrix against the model (changed by `change`).
        `window`, filled in by the action: {"mono": (a, b), "wall": (a, b)}, the span
        during which the contract itself leaves the host open (a flushed ruleset on a kernel
        without persist, until the agent has restored it); what passed inside it is shown
        as a figure, not a failure (so are losses there: a connection opened while the
        host was open has no state the restored rules know), and anything outside it still
        fails the step."""
        t0 = time.monotonic()
        future = copy.deepcopy(self.model)
        if change:
            change(future)
        before, after = self.model.expected(self.lab, self.probes), future.expected(self.lab, self.probes)
        wire_model = self.model if self.model.state == "isolated" and future.state == "isolated" else None
        self._watch_no += 1
        wire = WireWatch(self.lab, f"{self._watch_no}-{title.split()[0]}")
        problems: list[str] = []
        with wire, self._loop(before, after, powered_off) as loop:
            try:
                problems += action() or []
            except AssertionError as e:
                problems.append(f"{type(e).__name__}: {e}")
        self.model = future
        slack = 2.0 * load_factor()  # a probe sent inside the window may answer up to its timeout later
        if window and "mono" in window:
            start = time.monotonic() - loop.elapsed()
            a, b = (m - start for m in window["mono"])
            self.figures[f"{title}: window, host clock"] = round(b - a, 2)
            for kind in ("leaks", "losses"):  # a connection opened while open is cut when restored
                entries = getattr(loop.report, kind)
                inside = [e for e in entries if a <= e[0] <= b + slack]
                setattr(loop.report, kind, [e for e in entries if e not in inside])
                self.figures[f"{title}: probe {kind} inside the window"] = len(inside)
        if wire_model is not None:
            leaks = wire.leaks(wire_model)
            if window and "wall" in window:
                a, b = window["wall"]
                inside = [line for line in leaks if a <= float(line.split()[0]) <= b + slack]
                leaks = [line for line in leaks if line not in inside]
                self.figures[f"{title}: wire leaks inside the window"] = len(inside)
            problems += [f"WIRE LEAK {line}" for line in leaks[:20]]
            if len(leaks) > 20:
                problems.append(f"... {len(leaks) - 20} more packets left the guest")
        return self.check(title, explanation, loop.report, problems, started=t0, timeout=timeout)

    def _step(self, title, explanation, cli, change, timeout: float | None = None) -> Step:
        """The harness's step (Story._step: `timeout` is the matrix check's per probe),
        watched on the wire too."""
        return self._watched(title, explanation, lambda: (cli(), [])[1], change, timeout=timeout)

    # --- boot and install ------------------------------------------------------------------
    def install(self) -> Step:
        t0 = time.monotonic()
        g = self.lab.guest
        problems = []
        self.installer.install(self.lab)
        self.agent.write_config()
        g.succeed("systemctl restart cordon.service", timeout=120)
        g.wait_for_unit("cordon.service")
        self.agent.wait_enforcing()
        if g.execute("systemctl is-enabled cordon.service")[1].strip() != "enabled":
            problems.append("cordon.service is not enabled after install")
        self.figures["install"] = round(time.monotonic() - t0, 1)
        return self.check(f"installed ({self.installer.kind})", "the agent runs as a service, state "
                          "normal: every probe passes, both ways, IPv4 and IPv6", problems=problems,
                          started=t0)

    # --- tamper --------------------------------------------------------------------------
    def tamper(self, kernel_mode: str = "detect-and-repair", wait: float = 1.5) -> Step:
        """Root flushes the ruleset and deletes the table in the guest. detect-and-repair
        (no `persist`, Debian 12's 6.1): restored (DESIGN: within 1 s; the deadline here
        scales with the load, the time it took is a figure) with a tamper_detected event;
        until then the host is open (DESIGN §1 "if the rules vanish anyway"; status lists
        it in backend.limits), so packets inside that window are counted, not failed, and
        any after it fail. blocked (`persist`): the delete is refused, nothing may pass.
        Status must say which."""
        g = self.lab.guest
        window: dict = {}

        def act():
            problems = []
            before = len(self.agent.audit_events("tamper_detected"))
            limit = (1.0 + wait) * load_factor()
            # In the guest, timed there: how long after the delete the table is back.
            mono, wall = time.monotonic(), time.time()
            rc, out, err = g.execute(
                "nft flush ruleset; nft delete table inet cordon; echo deleted=$?; "
                "sleep 0.05; nft list tables; t0=$(date +%s%N); "
                "until nft list tables | grep -q cordon; do "
                f"(( $(date +%s%N) - t0 > {int(limit * 1e9)} )) && break; sleep 0.05; done; "
                "echo back=$(( ($(date +%s%N) - t0) / 1000000 ))")
            vanished = "cordon" not in out.split("deleted=")[-1].split("back=")[0]
            if kernel_mode == "detect-and-repair":
                window.update(mono=(mono, time.monotonic()), wall=(wall, time.time()))
            if "cordon" not in self.agent.nft_tables():
                problems.append(f"no cordon table {limit:.1f}s after tampering")
            elif vanished:
                self.figures["tamper: table back after delete (guest clock)"] = \
                    round(int(out.split("back=")[-1].strip()) / 1000, 2)
            if kernel_mode == "blocked" and "deleted=0" in out:
                problems.append("`nft delete table inet cordon` succeeded on a kernel with persist")
            if vanished and len(self.agent.audit_events("tamper_detected")) <= before:
                problems.append("the table vanished but no tamper_detected audit event followed")
            st = self.agent.status()
            if kernel_mode == "detect-and-repair" and not any(
                    "restored" in line for line in (st.get("backend") or {}).get("limits") or ()):
                problems.append("status backend.limits does not name the repair window")
            status = json.dumps(st)
            if kernel_mode not in status:
                problems.append(f"status --json does not say tamper mode {kernel_mode!r}")
            return problems
        return self._watched(f"tamper ({kernel_mode})", "root runs `nft flush ruleset` and `nft delete "
                             "table inet cordon` in the guest: isolation holds (detect-and-repair: "
                             "from the delete until the agent has restored the table, the "
                             "contract's own window)", act, window=window)

    # --- reboot ----------------------------------------------------------------------------
    def reboot(self) -> Step:
        """Reboot while isolated, watched from outside and on the wire for the whole boot;
        the agent must be enforcing before network-pre.target; the vendor must be reachable
        from the guest once the agent is up (time after power-on)."""
        g = self.lab.guest

        def act():
            problems = []
            shell = g.reboot()
            self.figures["reboot: shell after reset"] = round(shell, 1)
            g.wait_for_unit("cordon.service", timeout=180)
            self.agent.wait_enforcing()
            self.figures["reboot: enforcing after reset"] = round(time.monotonic() - g.started_at, 1)
            problems += self.boot_order_problems()
            vendor = {"addr": self.lab.addr("vendor", 4), "proto": "tcp", "port": 443, "family": 4,
                      "nonce": "", "sport": None}
            deadline = time.monotonic() + 120 * load_factor()
            while True:
                vendor["nonce"] = f"vendor{time.monotonic_ns()}"
                if guest_round_trips(self.lab, [vendor], 2.0) == [None]:
                    self.figures["reboot: vendor reachable after reset"] = round(time.monotonic() - g.started_at, 1)
                    break
                if time.monotonic() > deadline:
                    problems.append(f"the vendor was not reachable from the guest {120 * load_factor():.0f} s "
                                    "after the reboot")
                    break
            self.lab.wait_multi_user()
            self.lab._wait_guest_responder()
            return problems
        return self._watched("reboot", "`systemctl reboot` while isolated: no packet leaks during the "
                             "boot; enforcing before network-pre.target; vendor reachable again", act,
                             powered_off=True)

    def boot_order_problems(self) -> list[str]:
        out = self.lab.guest.succeed(
            "for u in cordon.service network-pre.target systemd-networkd.service; do "
            "echo $u $(systemctl show -p ActiveEnterTimestampMonotonic --value $u); done")
        t = {line.split()[0]: int(line.split()[1] or 0) for line in out.splitlines() if line.strip()}
        problems = []
        if not (0 < t["cordon.service"] <= t["network-pre.target"]):
            problems.append(f"cordon.service ready at {t['cordon.service']} us, network-pre.target at "
                            f"{t['network-pre.target']} us: not before")
        if not (t["cordon.service"] <= t["systemd-networkd.service"]):
            problems.append("systemd-networkd was up before cordon.service was ready")
        return problems

    # --- the service under abuse ------------------------------------------------------------
    def service_stop(self) -> Step:
        g = self.lab.guest

        def act():
            g.succeed("systemctl stop cordon.service")
            problems = [] if "cordon" in self.agent.nft_tables() else ["`systemctl stop` removed the table"]
            results = self.lab.probe_all(self.probes, timeout=self.timeout)
            exp = self.model.expected(self.lab, self.probes)
            problems += [f"while stopped: {r.probe.label()} expected {exp[r.probe]}, observed {r.verdict}"
                         for r in results if exp[r.probe] != r.verdict]
            g.succeed("systemctl start cordon.service", timeout=120)
            self.agent.wait_enforcing()
            return problems
        return self._watched("systemctl stop", "the service stopped: isolation stays in force "
                             "(matrix probed while it is down); started again, it adopts the table", act)

    def _restarted(self, how: str, signal_cmd: str, timeout: float) -> list[str]:
        g = self.lab.guest
        pid, n = self.agent.pid, self.agent.restarts()
        g.succeed(signal_cmd.format(pid=pid))
        timeout *= load_factor()  # a guard against a hang, not a verdict
        deadline = time.monotonic() + timeout
        while True:
            rc, out, _ = g.execute("systemctl show -p MainPID,NRestarts,ActiveState --value cordon.service")
            fields = out.split()
            if len(fields) == 3 and fields[0] not in ("0", str(pid)) and int(fields[1]) > n \
                    and fields[2] == "active":
                break
            if time.monotonic() > deadline:
                return [f"after {how} systemd did not restart the agent within {timeout:.0f}s ({out.split()})"]
            time.sleep(0.5)
        self.agent.wait_enforcing()
        return [] if "cordon" in self.agent.nft_tables() else [f"no cordon table after {how}"]

    def kill9(self) -> Step:
        return self._watched("kill -9", "SIGKILL the agent: isolation holds; systemd restarts it "
                             "(Restart=always) and it adopts the table",
                             lambda: self._restarted("kill -9", "kill -9 {pid}", 60))

    def watchdog(self) -> Step:
        def act():
            problems = self._restarted("a watchdog timeout", "kill -STOP {pid}", 90)
            journal = self.lab.guest.execute("journalctl -b -u cordon.service --no-pager | "
                                             "grep -ci 'watchdog timeout'")[1].strip()
            if journal in ("", "0"):
                problems.append("the journal shows no watchdog timeout for cordon.service")
            return problems
        return self._watched("watchdog", "SIGSTOP the agent: systemd's watchdog kills and restarts "
                             "it; isolation holds throughout", act)

    def upgrade(self) -> Step:
        def act():
            old = self.installer.version(self.lab)
            self.installer.upgrade(self.lab)
            self.lab.guest.wait_for_unit("cordon.service")
            self.agent.wait_enforcing()
            new = self.installer.version(self.lab)
            return [] if new != old or self.installer.kind != "deb" else [f"version still {old} after upgrade"]
        return self._watched("upgrade", "the package is upgraded while isolated: isolation holds "
                             "throughout, the new agent adopts the table", act)

    def purge(self) -> Step:
        t0 = time.monotonic()
        self.installer.purge(self.lab)
        left = self.installer.leftovers(self.lab)
        return self.check("purged", "`apt-get purge cordon` while normal: no table, no files, "
                          "every probe passes", problems=[f"left behind: {left}"] if left else [],
                          started=t0)
