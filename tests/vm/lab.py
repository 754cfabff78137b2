"""The netns lab with its endpoint replaced by a QEMU guest: the same abstract machine
(hosts, addresses, responders with a control socket, probes, expected tables) as
tests/harness/lab.py, so the same expectations and tables apply to both tiers.

Peers (router, vendor, dns, rmm, jump, outside) are network namespaces, as in the netns
tier. The guest's NIC is a tap device `to-endpoint` created inside the router namespace,
where QEMU runs. The guest runs the harness's own responder; its control socket is
reached through a virtio serial port (tests/vm/inguest/ctl_bridge.py), and the lab serves
it on the usual `ctl_path("endpoint")`, so probe code that asks "did the receiver see the
nonce?" works unchanged. Nothing touches the machine's own network namespace.

Not here yet: the `behind` host (a machine routed through the endpoint) needs a second
guest NIC; the netns tier covers the forward path.
"""
from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field

from tests.harness import lab as hlab, netns
from tests.harness.lab import DEFAULT_TOPOLOGY, Lab

from .guest import Guest, HarnessError

VM_TOPOLOGY = tuple(h for h in DEFAULT_TOPOLOGY if h.name != "behind")
GUEST = "endpoint"
GUEST_TEST_DIR = "/opt/cordon-test"
GUEST_CTL = "/run/cordon-test/responder.ctl"
REPO = hlab.REPO_ROOT


def _test_tree() -> bytes:
    """tests/harness and tests/vm/inguest as a tar, for the guest's /opt/cordon-test."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel in ["tests/__init__.py", "tests/harness", "tests/vm/__init__.py", "tests/vm/inguest"]:
            tar.add(os.path.join(REPO, rel), arcname=rel,
                    filter=lambda t: None if "__pycache__" in t.name else t)
    return buf.getvalue()


RESPONDER_UNIT = """[Unit]
Description=Lab responder (tests/harness/responder.py)
After=local-fs.target
[Service]
WorkingDirectory={dir}
RuntimeDirectory=cordon-test
StateDirectory=cordon-test
# bash stays the parent: the responder exits when its parent is pid 1
ExecStart=/bin/bash -c 'python3 -m tests.harness.responder --ctl {ctl} --ports {ports} --seen-log /var/lib/cordon-test/seen.log; exit $?'
Restart=always
RestartSec=0.2
[Install]
WantedBy=multi-user.target
"""

BRIDGE_UNIT = """[Unit]
Description=Lab responder control over virtio serial
After=cordon-responder.service
[Service]
WorkingDirectory={dir}
ExecStart=/usr/bin/python3 -m tests.vm.inguest.ctl_bridge {ctl}
Restart=always
RestartSec=0.2
[Install]
WantedBy=multi-user.target
"""


MAX_ASKERS = 1024  # requests in flight through one CtlProxy (a probe batch plus its liveness checks)


class CtlProxy:
    """Serves the guest responder's control protocol on a host unix socket, forwarding each
    request as "ID REQUEST" over the guest's virtio serial port."""

    def __init__(self, listen_path: str, port_path: str) -> None:
        self.listen_path, self.port_path = listen_path, port_path
        self._ids = itertools.count(1)
        self._waiting: dict[str, list] = {}
        self._lock = threading.Lock()
        self._port: socket.socket | None = None
        self._stop = threading.Event()
        self._serving = threading.BoundedSemaphore(MAX_ASKERS)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(listen_path)
        self._server.listen(256)
        self._server.settimeout(0.5)
        threading.Thread(target=self._accept, daemon=True).start()

    def _connect(self) -> socket.socket:
        with self._lock:
            if self._port is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.port_path)
                self._port = s
                threading.Thread(target=self._read, args=(s,), daemon=True).start()
            return self._port

    def _read(self, s: socket.socket) -> None:
        buf = b""
        while not self._stop.is_set():
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                ident, _, answer = line.decode(errors="replace").partition(" ")
                slot = self._waiting.get(ident)
                if slot is not None:
                    slot.append(answer.strip())
                    slot[0].set()
        with self._lock:
            if self._port is s:
                self._port = None

    def request(self, line: str, timeout: float, abandoned=lambda: False) -> str | None:
        """The guest's answer, or None after `timeout` or once `abandoned()` says the asker
        has gone (checked every 0.2 s): a waiter must not outlive its asker, else waiters
        pile up under load (each one waits longer the busier the machine) — one run grew
        to 18,000 threads that way."""
        ident = str(next(self._ids))
        slot = [threading.Event()]
        self._waiting[ident] = slot
        try:
            try:
                self._connect().sendall(f"{ident} {line}\n".encode())
            except OSError:
                with self._lock:
                    self._port = None
                return None
            end = time.monotonic() + timeout
            while not slot[0].wait(min(0.2, max(0.0, end - time.monotonic()))):
                if time.monotonic() >= end or abandoned():
                    return None
            return slot[1] if len(slot) > 1 else None
        finally:
            self._waiting.pop(ident, None)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._serving.acquire(blocking=False):
                conn.close()  # like a dead responder: the asker sees no answer (an ERROR, never a pass)
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._answer(conn)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the prober gave up on this answer (its deadline passed): nothing to tell it
        finally:
            self._serving.release()

    @staticmethod
    def _gone(conn: socket.socket) -> bool:
        """Has the asker closed its end? (readable with nothing to read)"""
        try:
            return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for line in f:
                # A guard against a dead guest, not a verdict: the client's own deadline
                # decides (it closes the connection and the late answer is dropped).
                answer = self.request(line.decode(errors="replace").strip(), 30 * hlab.load_factor(),
                                      abandoned=lambda: self._gone(conn))
                if answer is None:
                    return  # like a dead responder: the client sees no answer
                f.write(answer.encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        if self._port:
            self._port.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen_path)


@dataclass
class VmLab(Lab):
    topology: tuple = VM_TOPOLOGY
    image_dir: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peers = [h for h in self.hosts if h != GUEST]
        self.guest: Guest | None = None
        self.proxy: CtlProxy | None = None
        self.share = ""  # host directory shown read-only to the guest (9p), mounted on demand

    # --- the abstract machine: where a host's commands and sockets live -------------
    def is_guest(self, host: str) -> bool:
        return host == GUEST

    def run(self, host: str, *argv: str, check: bool = True, timeout: float = 30):
        if not self.is_guest(host):
            return super().run(host, *argv, check=check, timeout=timeout)
        cmd = shlex.join(argv)
        rc, out, err = self.guest.execute(cmd, timeout)
        if check and rc != 0:
            raise RuntimeError(f"in the guest: {cmd}: {err.strip() or rc}")
        return subprocess.CompletedProcess(list(argv), rc, out, err)

    def replay_command(self, p) -> str:
        """Peer-to-guest probes replay from the peer's namespace (Lab's command); a probe
        from the guest replays in the guest's control shell (tests/vm/inguest/probe_batch.py)."""
        if not self.is_guest(p.src):
            return super().replay_command(p)
        item = {"addr": self.addr(p.dst, p.family), "proto": p.proto, "port": p.port,
                "family": p.family, "nonce": "replay", "sport": p.sport, "timeout": 2.0}
        blob = base64.b64encode(json.dumps([item]).encode()).decode()
        return f"in the guest: cd {GUEST_TEST_DIR} && python3 -m tests.vm.inguest.probe_batch {blob}"

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self._claim_run()
        os.chmod(self.rundir, 0o755)
        for name in ["router", *self.peers]:
            netns.ip("netns", "add", self.ns(name))
            self.namespaces.append(self.ns(name))
        for name in self.peers:
            self._link(self.hosts[name])
        for name in ["router", *self.peers]:
            netns.ip("link", "set", "lo", "up", ns=self.ns(name))
        netns.run_in(self.ns("router"), "sysctl", "-qw", "net.ipv4.ip_forward=1",
                     "net.ipv6.conf.all.forwarding=1")
        self._tap()
        self._start_responders(self.peers)
        self.share = os.path.join(self.rundir, "share")
        os.makedirs(self.share)
        self.guest = Guest(self.image_dir, self.rundir, self.ns("router"), "to-endpoint",
                           log=self._say, share=self.share)
        port = self.guest.add_port("cordon.responder")
        self.guest.start()
        self.boot_seconds = self.guest.wait_for_shell()
        self.proxy = CtlProxy(self.ctl_path(GUEST), port)
        self.install_test_tree()
        self.multi_user_seconds = self.wait_multi_user()
        self._say(f"lab {self.runid}: guest at multi-user.target {self.multi_user_seconds:.1f}s "
                  f"after power-on ({time.monotonic() - t0:.1f}s since lab start)")
        self._wait_guest_responder()
        self._wait_reachable()
        self._say(f"lab {self.runid}: v4+v6 reachable ({time.monotonic() - t0:.1f}s)")

    def wait_multi_user(self, timeout: float = 240) -> float:
        self.guest.wait_for_unit("multi-user.target", timeout)
        return time.monotonic() - self.guest.started_at

    def _tap(self) -> None:
        h = self.hosts[GUEST]
        r = self.ns("router")
        netns.ip("tuntap", "add", "dev", "to-endpoint", "mode", "tap", ns=r)
        netns.ip("-batch", "-", ns=r, input="\n".join([
            f"addr add {h.gateway(4)}/{h.iface4.network.prefixlen} dev to-endpoint",
            f"addr add {h.gateway(6)}/{h.iface6.network.prefixlen} dev to-endpoint nodad",
            "link set to-endpoint up",
        ]) + "\n")

    def share_file(self, name: str, data: bytes | None = None, src: str | None = None) -> str:
        """Put a file into the read-only 9p share; returns its path in the guest."""
        import shutil
        dst = os.path.join(self.share, name)
        if src:
            shutil.copyfile(src, dst)
        else:
            with open(dst, "wb") as f:
                f.write(data)
        return f"/mnt/share/{name}"

    def with_share(self, command: str) -> str:
        """`command` with the share mounted (unmounted after: a mounted 9p share blocks savevm)."""
        return (f"mkdir -p /mnt/share && mount -t 9p -o trans=virtio,ro,version=9p2000.L share /mnt/share"
                f" && {{ {command}; }}; rc=$?; umount /mnt/share; exit $rc")

    def install_test_tree(self) -> None:
        """The harness's probe/responder code and two units into the guest (through the share)."""
        tree = self.share_file("cordon-test.tar.gz", _test_tree())
        ports = ",".join(str(p) for p in sorted(set(self.ports)))
        self.guest.succeed(self.with_share(
            f"rm -rf {GUEST_TEST_DIR} && mkdir -p {GUEST_TEST_DIR} && tar -xzf {tree} -C {GUEST_TEST_DIR}"))
        self.guest.succeed(
            f"cat > /etc/systemd/system/cordon-responder.service <<'EOF'\n"
            f"{RESPONDER_UNIT.format(dir=GUEST_TEST_DIR, ctl=GUEST_CTL, ports=ports)}EOF\n"
            f"cat > /etc/systemd/system/cordon-ctl-bridge.service <<'EOF'\n"
            f"{BRIDGE_UNIT.format(dir=GUEST_TEST_DIR, ctl=GUEST_CTL)}EOF\n"
            f"systemctl daemon-reload && systemctl enable cordon-responder cordon-ctl-bridge && "
            f"systemctl start --no-block cordon-responder cordon-ctl-bridge")

    def _wait_guest_responder(self, timeout: float = 60) -> None:
        timeout *= hlab.load_factor()
        deadline = time.monotonic() + timeout
        while self.control(GUEST, "PING", timeout=3 * hlab.load_factor()) != "PONG":
            if time.monotonic() > deadline:
                journal = self.guest.execute("journalctl -b -u cordon-responder -u cordon-ctl-bridge"
                                             " --no-pager | tail -20")[1]
                raise HarnessError(f"guest responder does not answer after {timeout}s:\n{journal}")
            time.sleep(0.3)

    def _wait_reachable(self) -> None:
        from .probe import vm_probes
        from tests.harness.probe import Probe
        probes = [Probe(GUEST, h, "icmp", None, fam) for h in self.peers for fam in (4, 6)]
        deadline = time.monotonic() + 60 * hlab.load_factor()
        while True:
            bad = [r for r in vm_probes(self, probes, timeout=2.0) if r.verdict != "ALLOWED"]
            if not bad:
                return
            if time.monotonic() > deadline:
                raise HarnessError("lab not reachable from the guest: " +
                                   "; ".join(f"{r.probe.label()}: {r.detail}" for r in bad))
            probes = [r.probe for r in bad]
            time.sleep(0.5)

    def control(self, host: str, command: str, timeout: float = 2.0) -> str | None:
        if self.is_guest(host) and self.proxy is not None:
            return self.proxy.request(command, timeout)
        return super().control(host, command, timeout)

    def listen(self, ports) -> None:
        """Every responder (the guest's too, also after a reboot) listens on these ports."""
        new = sorted(set(ports) - set(self.ports))
        super().listen(ports)
        if new:
            all_ports = ",".join(str(p) for p in sorted(set(self.ports)))
            self.guest.succeed(f"sed -i 's/--ports [0-9,]*/--ports {all_ports}/' "
                               f"/etc/systemd/system/cordon-responder.service && systemctl daemon-reload")

    def probe_all(self, probes, timeout: float = 2.0):
        from .probe import vm_probes
        self.listen({p.port for p in probes if p.port})
        return vm_probes(self, probes, timeout)

    def close(self) -> None:
        errors = []
        if self.proxy:
            self.proxy.close()
            self.proxy = None
        if self.guest:
            try:
                self.guest.close()
            except HarnessError as e:
                errors.append(str(e))
        super().close()
        if errors:
            raise HarnessError("; ".join(errors))
