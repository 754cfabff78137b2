"""The lab: a small declarative topology built from network namespaces and veths.

Every host is a namespace `cdn-<runid>-<host>` linked by one veth to the namespace it
attaches to (the `router`, or another host such as the endpoint for `behind`). Each link
is its own small subnet from the documentation ranges. Veths are created from inside
the lab's namespaces (`ip -n NS link add ... peer ... netns NS2`), so nothing — no
address, route, sysctl or interface — is ever created in the machine's own namespace.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from . import netns
from .errors import HarnessError
from .verbs import Verbs
from .waits import Deadline, load_factor, scaled, wait_until  # noqa: F401 (load_factor re-exported)

PREFIX = "cdn-"
TMP_PREFIX = "cdn-harness-"  # run directories (control sockets, agent state) in $TMPDIR
OWNER_DIR = "/run/cordon-harness"  # <runid>.owner: pid and start time of the run's process
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_PORTS = (22, 53, 80, 443, 3389, 8080)
TRAPPED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _lab_trap(signum, frame):
    """While a Lab is up: Ctrl-C/SIGTERM/SIGHUP become exceptions in the process that
    owns the lab, so `with Lab()` tears down. A forked child that still has this handler
    (it should not: see _forget_labs_in_child) dies instead of unwinding into the
    parent's code."""
    if os.getpid() not in _OWNERS:
        os._exit(128 + signum)
    outer = _OUTER.get(signum)
    if callable(outer) and outer is not signal.default_int_handler:
        return outer(signum, frame)  # the host process has its own way to stop (pytest's runner)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


_OWNERS: set[int] = set()  # pids that own a live Lab (the process that created it)
_OUTER: dict = {}  # the handlers in place before the outermost live Lab trapped signals


def _forget_labs_in_child() -> None:
    """After any fork: the child owns no lab and gets default signal dispositions, so a
    signal kills it rather than raising into code it copied from its parent."""
    _OWNERS.clear()
    _OUTER.clear()
    for sig in TRAPPED:
        if signal.getsignal(sig) is _lab_trap:
            signal.signal(sig, signal.SIG_DFL)


os.register_at_fork(after_in_child=_forget_labs_in_child)


@dataclass(frozen=True)
class Host:
    name: str
    v4: str  # address with its link prefix, e.g. "198.51.100.10/29"
    v6: str  # e.g. "2001:db8:51::10/64"
    attach: str = "router"

    @property
    def iface4(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.v4)

    @property
    def iface6(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(self.v6)

    def gateway(self, family: int):
        """The attach side's address on this link: the first address of the subnet
        that is not the host's own."""
        iface = self.iface4 if family == 4 else self.iface6
        for a in iface.network.hosts():
            if a != iface.ip:
                return a
        raise ValueError(f"{self.name}: link subnet {iface.network} too small")


DEFAULT_TOPOLOGY = (
    Host("endpoint", "192.0.2.10/29", "2001:db8:2::10/64"),
    Host("vendor", "198.51.100.10/29", "2001:db8:51::10/64"),
    Host("dns", "198.51.100.53/29", "2001:db8:53::53/64"),
    Host("rmm", "203.0.113.20/29", "2001:db8:20::20/64"),
    Host("jump", "203.0.113.5/29", "2001:db8:5::5/64"),
    Host("outside", "203.0.113.99/29", "2001:db8:99::99/64"),
    # A container/VM behind the endpoint: tests the forward path through it.
    Host("behind", "192.0.2.66/29", "2001:db8:b::66/64", attach="endpoint"),
)

_DOC_NETS = [ipaddress.ip_network(n) for n in
             ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _check_documentation_range(h: Host) -> None:
    for iface in (h.iface4, h.iface6):
        if not any(iface.network.subnet_of(n) for n in _DOC_NETS if n.version == iface.version):
            raise ValueError(f"host {h.name}: {iface} is outside the documentation ranges")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class Lab:
    topology: tuple[Host, ...] = DEFAULT_TOPOLOGY
    ports: tuple[int, ...] = DEFAULT_PORTS
    runid: str = field(default_factory=lambda: secrets.token_hex(3))
    log: callable = None  # progress callback(str), or None

    def __post_init__(self) -> None:
        self.hosts = {h.name: h for h in self.topology}
        for h in self.topology:
            _check_documentation_range(h)
            if h.attach != "router" and self.hosts[h.attach].attach != "router":
                raise ValueError(f"host {h.name}: attach only to the router or to a host on it")
        self.rundir = ""
        self.namespaces: list[str] = []
        self._owner = os.getpid()
        self._responders: dict[str, subprocess.Popen] = {}
        self._extra: list[subprocess.Popen] = []
        self._old_handlers: dict = {}

    # --- names and addresses -------------------------------------------------
    def ns(self, host: str) -> str:
        return f"{PREFIX}{self.runid}-{host}"

    def addr(self, host: str, family: int) -> str:
        h = self.hosts[host]
        return str(h.iface4.ip if family == 4 else h.iface6.ip)

    def ctl_path(self, host: str) -> str:
        return os.path.join(self.rundir, f"{host}.ctl")

    def vantage(self, host: str, family: int) -> tuple[str, str]:
        """Where to check a receiver is alive from, on a path isolation of the endpoint
        does not cross: the router for hosts on it, loopback inside the host otherwise."""
        if self.hosts[host].attach == "router" and host != "endpoint":
            return self.ns("router"), self.addr(host, family)
        return self.ns(host), "127.0.0.1" if family == 4 else "::1"

    def replay_command(self, p) -> str:
        """A shell command (run from the repository root while the lab is up) that repeats
        one probe's round trip (tests/harness/__main__.py `probe`)."""
        argv = [sys.executable, "-m", "tests.harness", "probe", self.ns(p.src),
                self.addr(p.dst, p.family), p.proto]
        if p.port:
            argv.append(str(p.port))
        if p.sport:
            argv += ["--sport", str(p.sport)]
        return shlex.join(argv)

    # --- lifecycle -----------------------------------------------------------
    def __enter__(self) -> "Lab":
        self._trap_signals()
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _say(self, msg: str) -> None:
        if self.log:
            self.log(msg)

    def start(self) -> None:
        t0 = time.monotonic()
        self._claim_run()
        for name in ["router", *self.hosts]:
            netns.add(self.ns(name))
            self.namespaces.append(self.ns(name))
        for h in self.topology:
            self._link(h)
        for name in ["router", *self.hosts]:
            netns.ip("link", "set", "lo", "up", ns=self.ns(name))
        forwarders = {"router"} | {h.attach for h in self.topology}
        for name in forwarders:
            netns.run_in(self.ns(name), "sysctl", "-qw", "net.ipv4.ip_forward=1",
                         "net.ipv6.conf.all.forwarding=1")
        self._say(f"lab {self.runid}: {len(self.namespaces)} namespaces up "
                  f"({time.monotonic() - t0:.1f}s)")
        self._start_responders()
        self._wait_reachable()
        self._say(f"lab {self.runid}: responders up, v4+v6 reachable ({time.monotonic() - t0:.1f}s)")

    def _claim_run(self) -> None:
        """The owner record `sweep` reads (this process owns the run) and the run directory."""
        os.makedirs(OWNER_DIR, exist_ok=True)
        with open(os.path.join(OWNER_DIR, f"{self.runid}.owner"), "w") as f:
            json.dump({"pid": os.getpid(), "start": _start_time(os.getpid())}, f)
        self.rundir = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.runid}-")

    def _link(self, h: Host) -> None:
        up_ns, host_ns = self.ns(h.attach), self.ns(h.name)
        side = f"to-{h.name}"[:15]
        netns.ip("link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", host_ns, ns=up_ns)
        g4, g6 = h.gateway(4), h.gateway(6)
        p4, p6 = h.iface4.network.prefixlen, h.iface6.network.prefixlen
        netns.ip("-batch", "-", ns=up_ns, input="\n".join([
            f"addr add {g4}/{p4} dev {side}",
            f"addr add {g6}/{p6} dev {side} nodad",
            f"link set {side} up",
        ]) + "\n")
        netns.ip("-batch", "-", ns=host_ns, input="\n".join([
            f"addr add {h.v4} dev eth0",
            f"addr add {h.v6} dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {g4}",
            f"route add default via {g6}",
        ]) + "\n")
        if h.attach != "router":  # the router reaches hosts behind a host through it
            via = self.hosts[h.attach]
            netns.ip("-batch", "-", ns=self.ns("router"), input="\n".join([
                f"route add {h.iface4.network} via {via.iface4.ip}",
                f"route add {h.iface6.network} via {via.iface6.ip}",
            ]) + "\n")

    def _start_responders(self, names=None) -> None:
        """A responder in each of `names` (default: every host), each PINGed until it answers."""
        env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        ports = ",".join(str(p) for p in sorted(set(self.ports)))
        for name in self.hosts if names is None else names:
            self._responders[name] = subprocess.Popen(
                netns.exec_argv(self.ns(name), sys.executable, "-m", "tests.harness.responder",
                                "--ctl", self.ctl_path(name), "--ports", ports),
                env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
        for name, proc in self._responders.items():
            wait_until(lambda: self.control(name, "PING") == "PONG", 15, f"responder on {name} up",
                       abort=lambda: proc.poll() is not None and f"it exited with {proc.returncode}")

    def _wait_reachable(self) -> None:
        from .probe import Probe, run_probes  # probe imports lab's types; avoid a cycle
        probes = [Probe("endpoint", h, "icmp", None, fam)
                  for h in self.hosts if h != "endpoint" for fam in (4, 6)]
        probes += [Probe("behind", "outside", "icmp", None, fam) for fam in (4, 6)]
        deadline = Deadline(10)
        while True:
            bad = [r for r in run_probes(self, probes, timeout=1.0) if r.verdict != "ALLOWED"]
            if not bad:
                return
            if deadline.expired:
                raise HarnessError("lab not reachable before isolation: " +
                                   "; ".join(f"{r.probe.label()}: {r.detail}" for r in bad))
            probes = [r.probe for r in bad]

    def control(self, host: str, command: str, timeout: float = 2.0) -> str | None:
        """One request on a responder's control socket; None if it does not answer."""
        import socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.ctl_path(host))
                s.sendall(command.encode() + b"\n")
                return s.makefile().readline().strip() or None
        except OSError:
            return None

    def listen(self, ports) -> None:
        """Make every responder listen on these TCP/UDP ports too."""
        new = sorted(set(ports) - set(self.ports))
        if not new:
            return
        for name in self.hosts:
            answer = self.control(name, "PORTS " + ",".join(map(str, new)))
            if answer != "OK":
                raise RuntimeError(f"responder on {name} cannot listen on {new}: {answer}")
        self.ports = tuple(sorted(set(self.ports) | set(new)))

    def probe(self, src: str, dst: str, proto: str, port: int | None = None, family: int = 4,
              sport: int | None = None, timeout: float = 1.0):
        from .probe import probe
        return probe(self, src, dst, proto, port, family, sport, timeout)

    def probe_all(self, probes, timeout: float = 1.0):
        from .probe import run_probes
        self.listen({p.port for p in probes if p.port})
        return run_probes(self, probes, timeout)

    # --- asserting verbs (tests.harness.verbs, tests.harness.table) ----------------
    def node(self, host: str) -> "Node":
        """A host as a command runner: `lab.node("endpoint").succeed("nft", "list", "tables")`."""
        return Node(self, host)

    def expect_table(self, comparison):
        """Raise (CordonWrong / HarnessError) with the printed table, replay commands
        included, unless every cell of `comparison` is as expected."""
        from .table import expect_table
        return expect_table(comparison, self)

    def expect_matrix(self, expected: dict, title: str = "", timeout: float = 1.0):
        """Probe every probe of `expected` (probe -> verdict) and `expect_table` the result."""
        from .table import Comparison
        return self.expect_table(Comparison(expected, self.probe_all(list(expected), timeout), title))

    def kill_responder(self, host: str) -> None:
        proc = self._responders.pop(host)
        proc.kill()
        proc.wait()

    def spawn(self, host: str, *argv: str, **kw) -> subprocess.Popen:
        """A process inside a host's namespace, in a session of its own: teardown kills
        that process group (and nothing else)."""
        p = subprocess.Popen(netns.exec_argv(self.ns(host), *argv), start_new_session=True, **kw)
        self._extra.append(p)
        return p

    def run(self, host: str, *argv: str, check: bool = True, timeout: float = 30):
        return netns.run_in(self.ns(host), *argv, check=check, timeout=timeout)

    def close(self) -> None:
        """Kill the processes this lab started (their process groups, by pid), delete its
        namespaces, and report (HarnessError) any process it did not start that is still
        in one of them: such a process is never signalled, it may be the runner's own."""
        if os.getpid() != self._owner:
            return  # a forked child never tears down its parent's lab
        if self._old_handlers:  # a second Ctrl-C must not cut the teardown short
            for sig in TRAPPED:
                signal.signal(sig, signal.SIG_IGN)
        strays: dict[str, list[str]] = {}
        try:
            procs = [*self._responders.values(), *self._extra]
            for p in procs:
                _signal_group(p, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=scaled(2))
                except subprocess.TimeoutExpired:
                    _signal_group(p, signal.SIGKILL)
                    p.wait()
                _signal_group(p, signal.SIGKILL)  # what is left of its group
            self._responders.clear()
            self._extra.clear()
            for ns in self.namespaces:
                left = _wait_empty(ns, 2)
                if left:
                    strays[ns] = left
                remove_namespace(ns)
            self.namespaces.clear()
            if self.rundir:
                shutil.rmtree(self.rundir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(OWNER_DIR, f"{self.runid}.owner"))
        finally:
            self._restore_signals()
        if strays:
            raise HarnessError("processes the harness did not start were in its namespaces "
                               "(not signalled; namespaces deleted): " +
                               "; ".join(f"{ns}: {', '.join(p)}" for ns, p in strays.items()))

    def _trap_signals(self) -> None:
        """Ctrl-C/SIGTERM/SIGHUP become exceptions so that `with Lab()` tears down, whatever
        dispositions the process inherited (a runner started in the background inherits
        SIGINT ignored). Only possible from the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        _OWNERS.add(self._owner)
        for sig in TRAPPED:
            self._old_handlers[sig] = signal.signal(sig, _lab_trap)
            if self._old_handlers[sig] is not _lab_trap:
                _OUTER[sig] = self._old_handlers[sig]

    def _restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        if self._old_handlers and all(signal.getsignal(s) is not _lab_trap for s in TRAPPED):
            _OWNERS.discard(self._owner)
            _OUTER.clear()
        self._old_handlers.clear()


class Node(Verbs):
    """One lab host for the asserting verbs: commands run in its namespace."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host

    def _execute(self, args: tuple, timeout: float) -> subprocess.CompletedProcess:
        return netns.run_in(self.lab.ns(self.host), *args, check=False, timeout=timeout)

    def _describe(self, args: tuple) -> str:
        return f"{self.host}$ {shlex.join(args)}"


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    """Signal the process group led by a process this harness started (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:80]})"


def _wait_empty(ns: str, seconds: float) -> list[str]:
    """Wait until no process is in `ns`; describe those still there after `seconds` x load."""
    deadline = Deadline(seconds)
    while (pids := netns.pids_in(ns)) and not deadline.expired:
        time.sleep(0.02)
    return [_describe(p) for p in pids]


def remove_namespace(ns: str) -> None:
    """Delete a namespace name (its veths go with it); signals nobody."""
    netns.forget(ns)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _kill_everything_in(ns: str) -> None:
    """Only for `sweep`, on namespaces whose run is dead: kill what is left inside."""
    for _ in range(50):
        pids = netns.pids_in(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _owner_alive(runid: str) -> bool | None:
    """True/False for harness runs with an owner record, None for namespaces we don't know."""
    try:
        with open(os.path.join(OWNER_DIR, f"{runid}.owner")) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None
    return _start_time(owner["pid"]) == owner["start"]


def sweep(everything: bool = False, say=print) -> list[str]:
    """Remove leftovers of crashed runs: `cdn-` namespaces (and their processes) whose
    harness run is no longer alive. Namespaces with no owner record may belong to another
    test that is running right now; they are removed only with `everything=True`."""
    removed = []
    for ns in netns.list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        runid = ns[len(PREFIX):].split("-", 1)[0]
        alive = _owner_alive(runid)
        if alive or (alive is None and not everything):
            say(f"keep   {ns} ({'run alive' if alive else 'no owner record; use --all'})")
            continue
        _kill_everything_in(ns)
        remove_namespace(ns)
        removed.append(ns)
        say(f"remove {ns}")
    if os.path.isdir(OWNER_DIR):
        live = {n[len(PREFIX):].split("-", 1)[0] for n in netns.list_namespaces()}
        for f in os.listdir(OWNER_DIR):
            if f.removesuffix(".owner") not in live and not _owner_alive(f.removesuffix(".owner")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(OWNER_DIR, f))
    for d in os.listdir(tempfile.gettempdir()):
        if d.startswith(TMP_PREFIX) and not _owner_alive(d[len(TMP_PREFIX):].split("-", 1)[0]):
            shutil.rmtree(os.path.join(tempfile.gettempdir(), d), ignore_errors=True)
    return removed
