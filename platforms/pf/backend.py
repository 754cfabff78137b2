"""macOS enforcement: a pf anchor under com.apple/, driven through pfctl.

The text comes from pf_render (pure); this module only runs pfctl, keeps the pf
enable token on disk and cuts connections isolation does not allow. Every pfctl
call goes through one injectable runner, so tests drive a fake pfctl.

Never `pfctl -d` and never a global `pfctl -F`: pf is shared with macOS itself
(AirDrop, the Application Firewall, Internet Sharing). We hold one enable
reference (`-E`, released with `-X TOKEN`) and touch only our own anchor — except
when the main ruleset no longer evaluates `com.apple/*` at all, in which case we
reload the operating system's own /etc/pf.conf (we never edit it).
"""
from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from platforms.plan import Plan
from platforms.durable import remove_durable, write_atomic
from platforms.base import Backend, BackendError, BackendUnavailable, Capabilities, ReadBack, Support
from platforms.pf import render as pf_render
from platforms.pf.render import ANCHOR


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[list[str], "str | None"], Result]


def subprocess_runner(argv: list[str], stdin: str | None = None) -> Result:
    p = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    return Result(p.returncode, p.stdout, p.stderr)


PFCTL = "/sbin/pfctl"
TOKEN_FILE = "pf.token"
NOTES = (f"pf anchor {ANCHOR}, the first child of com.apple/* in pf's name order; rules stay loaded "
         "when the agent dies, not after a reboot (the agent re-applies at start); another root "
         "process can flush the anchor, disable pf or load an anchor that sorts before ours: "
         "read_back detects it and apply restores what is ours")
_TOKEN = re.compile(r"Token\s*:\s*(\d+)")
# What pfctl -X says for a token the kernel does not know (e.g. after a reboot):
# DIOCSTOPREF fails with EINVAL.
_STALE_TOKEN = re.compile(r"invalid|not found|no such|not enabled", re.I)
# What `pfctl -a NAME -sr` says for an anchor the kernel does not hold: pf removes an
# anchor once it is empty and unreferenced (after our -F all), then DIOCGETRULES fails.
_NO_ANCHOR = re.compile(r"DIOCGETRULES: Invalid argument")


@dataclass(frozen=True)
class State:
    """One line of `pfctl -ss`. pfctl prints the local side first in both directions:
    `ALL tcp LOCAL:lport -> REMOTE:rport` (outbound), `... LOCAL <- REMOTE` (inbound)."""

    iface: str
    proto: str
    direction: str  # "out" | "in"
    local: str
    local_port: int | None
    remote: str
    remote_port: int | None

    @property
    def initiator_responder(self) -> tuple[str, str]:
        return (self.local, self.remote) if self.direction == "out" else (self.remote, self.local)


_STATE = re.compile(r"^(?P<if>\S+) (?P<proto>\S+) (?P<left>\S+)(?: \(\S+\))? (?P<arrow><-|->) "
                    r"(?P<right>\S+)(?: \(\S+\))?(?:\s+\S+)?\s*$")


def parse_states(text: str) -> list[State]:
    states = []
    for line in text.splitlines():
        m = _STATE.match(line.strip())
        if not m:
            continue  # the indented detail lines of -v output, "No ALTQ support" noise
        (la, lp), (ra, rp) = _endpoint(m["left"]), _endpoint(m["right"])
        states.append(State(m["if"], m["proto"], "out" if m["arrow"] == "->" else "in", la, lp, ra, rp))
    return states


def _endpoint(text: str) -> tuple[str, int | None]:
    if text.endswith("]") and "[" in text:  # IPv6: addr[port]
        addr, port = text[:-1].split("[")
        return addr, int(port)
    if text.count(":") == 1:
        addr, port = text.split(":")
        return addr, int(port)
    return text, None


def state_allowed(s: State, plan: Plan) -> bool:
    """Would isolation `plan` allow the connection behind this state?"""
    try:
        local, remote = ipaddress.ip_address(s.local), ipaddress.ip_address(s.remote)
    except ValueError:
        return False
    if s.iface == "lo0" or local.is_loopback or remote.is_loopback:
        return True
    if remote.version != 4:
        return False
    if s.proto == "udp" and plan.dhcp_sends_to(s.local_port, str(remote), s.remote_port):
        return True
    return plan.allows(s.proto, remote, s.local_port, s.remote_port, s.direction)


def anchor_point(main_listing: str, anchor: str = ANCHOR) -> tuple[bool, str]:
    """Does the main ruleset evaluate our anchor before anything could pass a packet
    for good? Rules before it that are `quick`, or other anchors, could."""
    parent = anchor.rsplit("/", 1)[0]
    calls = {f'anchor "{parent}/*"', f'anchor "{anchor}"'}
    for line in (ln.strip() for ln in main_listing.splitlines()):
        if not line or line.startswith(("scrub", "nat", "rdr", "binat", "dummynet")):
            continue
        if any(line.startswith(c) for c in calls):
            return True, "ok"
        if line.startswith("anchor ") or (line.startswith("pass") and " quick" in line):
            return False, f"evaluated before {anchor}: {line!r}"
    return False, f"the main ruleset does not evaluate {anchor}"


def evaluated_before(anchor: str, siblings_listing: str) -> list[str]:
    """The siblings of `anchor` that its parent's `/*` evaluates first: pf orders children
    by strcmp of their paths, which is Python's bytes order. `siblings_listing` is what
    `pfctl -a PARENT -s Anchors` prints (one path a line, indented)."""
    mine = anchor.encode()
    names = [ln.strip() for ln in siblings_listing.splitlines() if ln.strip()]
    return sorted(n for n in names if n.encode() < mine)


class PfBackend(Backend):
    name = "pf"
    CAPABILITIES = Capabilities(survives_agent_exit=True, blocks_tamper_while_alive=False,
                                atomic_apply=True, cuts_open_connections=True, notes=NOTES)

    def __init__(self, state_dir: str | None = None, run: Runner | None = None, *,
                 pfctl: str = PFCTL, main_conf: str = "/etc/pf.conf", anchor: str = ANCHOR) -> None:
        super().__init__(state_dir)
        self._run = run
        self.pfctl, self.main_conf, self.anchor = pfctl, main_conf, anchor

    @classmethod
    def is_supported(cls) -> Support:
        if sys.platform != "darwin":
            return Support(False, f"pf is driven through pfctl, which exists on macOS only "
                                  f"(this is {sys.platform})")
        try:
            r = subprocess_runner([PFCTL, "-s", "info"], None)
        except (OSError, subprocess.SubprocessError) as exc:
            return Support(False, f"cannot run {PFCTL}: {exc}")
        if r.rc != 0:
            return Support(False, f"{PFCTL} -s info exited {r.rc}: {r.stderr.strip()}")
        return Support(True, f"{PFCTL} -s info answered")

    def render(self, plan: Plan) -> str:
        return pf_render.render(plan)

    # ------------------------------------------------------------ apply / clear

    def apply(self, plan: Plan) -> None:
        text = pf_render.render(plan)
        self._pfctl("-a", self.anchor, "-n", "-f", "-", stdin=text)  # nothing changes if this fails
        self._pfctl("-a", self.anchor, "-f", "-", stdin=text)          # one load: tables and rules swap together
        self._ensure_anchor_point()
        self._ensure_enabled()
        self._cut_disallowed(plan)

    def clear(self) -> None:
        r = self._pfctl("-a", self.anchor, "-F", "all", check=False)
        if r.rc != 0 and self._rules_of(self.anchor).strip():
            raise BackendError(f"pfctl -a {self.anchor} -F all failed: {r.stderr.strip()}")
        token = self.load_token()
        if token:
            r = self._pfctl("-X", token, check=False)
            if r.rc != 0 and not _STALE_TOKEN.search(r.stderr):
                raise BackendError(f"pfctl -X {token} failed: {r.stderr.strip()}")
            self._forget_token()

    def _ensure_anchor_point(self) -> None:
        ok, why = anchor_point(self._pfctl("-sr").stdout, self.anchor)
        if ok:
            return
        # The main ruleset was flushed or replaced: restore the operating system's own.
        self._pfctl("-n", "-f", self.main_conf)
        self._pfctl("-f", self.main_conf)
        ok, why = anchor_point(self._pfctl("-sr").stdout, self.anchor)
        if not ok:
            raise BackendError(f"pf does not evaluate {self.anchor} even after reloading {self.main_conf}: {why}")

    def _ensure_enabled(self) -> None:
        old = self.load_token()
        if old and self._enabled() and self._token_registered(old):
            return
        r = self._pfctl("-E")
        m = _TOKEN.search(r.stderr) or _TOKEN.search(r.stdout)
        if not m:
            raise BackendError(f"pfctl -E printed no token: {r.stderr.strip()!r}")
        self._save_token(m.group(1))
        if old and old != m.group(1):
            self._pfctl("-X", old, check=False)  # take the new reference before dropping a stale one

    def _cut_disallowed(self, plan: Plan) -> None:
        """pf passes packets of existing states without looking at rules: kill the
        states of connections the plan does not allow. macOS pfctl kills by host
        pair only (`-k A -k B`), so an allowed flow that shares a host pair with a
        disallowed one is cut too; it reconnects through the rules."""
        for attempt in ("initiator-first", "responder-first"):
            victims = [s for s in parse_states(self._pfctl("-ss").stdout) if not state_allowed(s, plan)]
            if not victims:
                return
            pairs = dict.fromkeys(s.initiator_responder for s in victims)
            for a, b in pairs:
                first, second = (a, b) if attempt == "initiator-first" else (b, a)
                self._pfctl("-k", first, "-k", second)
        left = [s for s in parse_states(self._pfctl("-ss").stdout) if not state_allowed(s, plan)]
        if left:
            raise BackendError(f"{len(left)} connections not allowed by isolation are still open, "
                               f"e.g. {left[0].local} {left[0].direction} {left[0].remote}")

    # ------------------------------------------------------------ read back

    def read_back(self) -> ReadBack:
        listing = self._rules_of(self.anchor)
        enabled = self._enabled()
        token = self.load_token()
        details: dict = {"anchor": self.anchor, "pf_enabled": enabled, "token": token}
        if not listing.strip():
            return ReadBack(present=False, digest=None, details=details)
        tables = {}
        for name in sorted(set(re.findall(r"<([^>\s]+)>", listing))):
            r = self._pfctl("-a", self.anchor, "-t", name, "-T", "show", check=False)
            if r.rc == 0:
                tables[name] = pf_render.parse_table_show(r.stdout)
        res = pf_render.read_rules(listing, tables)
        point_ok, why = anchor_point(self._pfctl("-sr").stdout, self.anchor)
        first = self._earlier_rules()
        problems = list(res.problems)
        if not res.loopback:
            problems.append("loopback rule missing")
        if not res.block_last:
            problems.append("final block rule missing")
        if not enabled:
            problems.append("pf is disabled")
        if not point_ok:
            problems.append(why)
        problems += [f"anchor {n} holds rules and is evaluated before {self.anchor}" for n in first]
        details.update(rules=len(listing.strip().splitlines()), tables=len(tables), atoms=len(res.atoms),
                       dhcp=res.dhcp, dhcp_servers=list(res.dhcp_servers), anchor_point=point_ok,
                       evaluated_first=first, problems=problems,
                       token_registered=bool(token) and self._token_registered(token))
        digest = res.digest() if enabled and point_ok and not first else None
        return ReadBack(present=True, digest=digest, details=details)

    def _rules_of(self, anchor: str) -> str:
        """`pfctl -a ANCHOR -sr`; an anchor pf does not hold has no rules."""
        r = self._pfctl("-a", anchor, "-sr", check=False)
        if r.rc != 0 and not _NO_ANCHOR.search(r.stderr):
            raise BackendError(f"pfctl -a {anchor} -sr failed: {r.stderr.strip()}")
        return r.stdout if r.rc == 0 else ""

    def _earlier_rules(self) -> list[str]:
        """Siblings evaluated before our anchor that hold rules (an empty one, like Apple's
        placeholders, decides nothing)."""
        parent = self.anchor.rsplit("/", 1)[0]
        siblings = self._pfctl("-a", parent, "-s", "Anchors", check=False).stdout
        return [n for n in evaluated_before(self.anchor, siblings) if self._rules_of(n).strip()]

    # ------------------------------------------------------------ pfctl and token

    def _pfctl(self, *args: str, stdin: str | None = None, check: bool = True) -> Result:
        run = self._run
        if run is None:
            if sys.platform != "darwin":
                raise BackendUnavailable("the pf backend runs pfctl, which exists on macOS only")
            run = subprocess_runner
        try:
            r = run([self.pfctl, *args], stdin)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailable(f"cannot run {self.pfctl}: {exc}") from exc
        if check and r.rc != 0:
            raise BackendError(f"pfctl {' '.join(args)} failed: {r.stderr.strip()}")
        return r

    def _enabled(self) -> bool:
        return bool(re.search(r"^Status:\s+Enabled", self._pfctl("-s", "info").stdout, re.M))

    def _token_registered(self, token: str) -> bool:
        r = self._pfctl("-s", "References", check=False)
        return r.rc == 0 and token in r.stdout.split()

    def _token_path(self) -> str:
        if not self.state_dir:
            raise BackendError("the pf backend needs a state_dir to keep its pf enable token")
        return os.path.join(self.state_dir, TOKEN_FILE)

    def load_token(self) -> str | None:
        if not self.state_dir:
            return None
        try:
            with open(self._token_path(), encoding="ascii") as fh:
                text = fh.read().strip()
        except FileNotFoundError:
            return None
        return text if text.isdigit() else None

    def _save_token(self, token: str) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        write_atomic(self._token_path(), (token + "\n").encode("ascii"))

    def _forget_token(self) -> None:
        remove_durable(self._token_path())
