"""A QEMU guest driven like the NixOS test driver: `succeed`, `fail`, `wait_for_unit`,
`wait_until_succeeds`, `reboot`, `crash`, `set_link` - over a root shell on a virtio
console (tests/vm/guest/vm-shell), never over the guest's network.

    g = Guest(image_dir, rundir, netns="cdn-ab12-router", tap="to-endpoint", log=print)
    g.start(); g.wait_for_shell(); g.succeed("systemctl is-system-running --wait")
    g.reboot(); g.crash(); g.start(); g.close()

The guest's only NIC is a tap device that the test created inside one of its network
namespaces; QEMU runs inside that namespace so it can attach the tap. Teardown kills QEMU
by its pid, even when a test fails.
"""
from __future__ import annotations

import base64
import contextlib
import itertools
import os
import shlex
import signal
import socket
import subprocess
import threading
import time

from tests.harness.errors import HarnessError  # the guest broken (no shell, QEMU died)
from tests.harness.lab import load_factor




class GuestAssertion(AssertionError):
    """A command's outcome was not what the scenario requires."""


def kvm_usable() -> bool:
    """Probe, don't assume: these machines expose a /dev/kvm whose nested module runs only
    special guest kernels (DESIGN §9), so KVM is used only when CORDON_VM_KVM=1 says the
    host has real hardware virtualisation."""
    return os.environ.get("CORDON_VM_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK)


class Guest:
    MAC = "52:54:00:c0:7d:10"

    def __init__(self, image_dir: str, rundir: str, netns: str, tap: str, name: str = "endpoint",
                 log=None, memory: int = 1024, share: str | None = None) -> None:
        self.image_dir, self.rundir, self.netns, self.tap = image_dir, rundir, netns, tap
        self.name, self.memory, self.share = name, memory, share
        self._log = log or (lambda msg: None)
        self.disk = os.path.join(rundir, f"{name}.qcow2")
        self.shell_path = os.path.join(rundir, f"{name}.shell")
        self.monitor_path = os.path.join(rundir, f"{name}.monitor")
        self.console_log = os.path.join(rundir, f"{name}.console.log")
        self.chardevs: dict[str, str] = {}   # virtserialport name -> host unix socket path
        self.proc: subprocess.Popen | None = None
        self.boot_id = ""
        self.started_at = 0.0                # monotonic time of the last power-on / reset
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.link_up = True

    def log(self, msg: str) -> None:
        self._log(f"[{self.name}] {msg}")

    # --- QEMU --------------------------------------------------------------------
    def add_port(self, name: str) -> str:
        """A virtio serial port `name` in the guest (/dev/virtio-ports/NAME), a unix
        socket on the host; call before start()."""
        self.chardevs[name] = os.path.join(self.rundir, f"{self.name}.{name}")
        return self.chardevs[name]

    def argv(self) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if kvm_usable() else \
                ["-accel", "tcg,thread=multi", "-cpu", "max"]
        a = ["qemu-system-x86_64", *accel, "-machine", "q35", "-smp", "2", "-m", str(self.memory),
             "-nodefaults", "-no-user-config", "-display", "none",
             "-kernel", os.path.join(self.image_dir, "vmlinuz"),
             "-initrd", os.path.join(self.image_dir, "initrd.img"),
             "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1 quiet",
             "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe",
             "-serial", f"file:{self.console_log}",
             "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
             "-device", "virtio-serial-pci",
             "-chardev", f"socket,id=shell,path={self.shell_path},server=on,wait=off",
             "-device", "virtconsole,chardev=shell",
             "-netdev", f"tap,id=data,ifname={self.tap},script=no,downscript=no",
             "-device", f"virtio-net-pci,netdev=data,mac={self.MAC}"]
        for i, (port, path) in enumerate(self.chardevs.items()):
            a += ["-chardev", f"socket,id=port{i},path={path},server=on,wait=off",
                  "-device", f"virtserialport,chardev=port{i},name={port}"]
        if self.share:
            a += ["-virtfs", f"local,path={self.share},mount_tag=share,security_model=none,"
                             f"readonly=on,id=share"]
        return a

    def start(self) -> None:
        """Power on (a fresh overlay over the cached image on first start; the same disk
        after a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError("guest already running")
        if not os.path.exists(self.disk):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                            os.path.join(self.image_dir, "disk.qcow2"), self.disk], check=True)
        for p in [self.shell_path, self.monitor_path, *self.chardevs.values()]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)  # stale sockets of a killed QEMU
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *self.argv()],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.rundir, f"{self.name}.qemu.err"), "a"),
                                     start_new_session=True)
        self.log(f"qemu pid {self.proc.pid} started")
        self._connect_shell()
        if not self.link_up:
            self.set_link(False)

    def _connect_shell(self, timeout: float = 20) -> None:
        timeout *= load_factor()
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.shell_path)
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise HarnessError(f"no shell socket {self.shell_path} after {timeout:.0f}s")
                time.sleep(0.05)
        self._sock, self._buf = s, b""

    def _check_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise HarnessError(f"QEMU is not running (exit {rc}); console log {self.console_log}")

    def monitor(self, command: str, timeout: float = 10) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(self.monitor_path)
            out = b""
            while not out.endswith(b"(qemu) "):
                out += s.recv(4096)
            s.sendall(command.encode() + b"\n")
            out = b""
            while out.count(b"(qemu) ") < 1:
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
            return out.decode(errors="replace")

    # --- the control shell ----------------------------------------------------------
    def _readline(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            self._check_running()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(min(left, 1.0))
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise HarnessError("the console socket closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.strip()

    def wait_for_shell(self, timeout: float = 240) -> float:
        """Wait for the shell's READY line of a new boot; returns seconds since power-on/reset."""
        timeout *= load_factor()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._readline(deadline)
            except TimeoutError:
                raise HarnessError(f"no control shell within {timeout}s; see {self.console_log}") from None
            if line.startswith(b"@READY:"):
                boot = line.split(b":", 1)[1].decode()
                if boot != self.boot_id:
                    self.boot_id = boot
                    t = time.monotonic() - self.started_at
                    self.log(f"control shell up {t:.1f}s after power-on (boot {boot[:8]})")
                    return t

    LINE_MAX = 3000  # the console's tty loses input past its 4 KiB buffer: keep lines short

    def execute(self, command: str, timeout: float = 60) -> tuple[int, str, str]:
        """Run `command` with bash in the guest (stdin /dev/null); (status, stdout, stderr).
        A long command is first staged in the guest in short pieces."""
        payload = base64.b64encode(command.encode()).decode()
        if len(payload) > self.LINE_MAX:
            stage = f"/run/vm-shell/stage-{next(self._ids)}"
            for i in range(0, len(payload), 2000):
                rc, _, err = self._run_line(f"printf %s '{payload[i:i + 2000]}' >> {stage}.b64", 30)
                if rc != 0:
                    raise HarnessError(f"staging a command in the guest failed: {err[-300:]}")
            return self._run_line(f"base64 -d {stage}.b64 > {stage} && rm {stage}.b64 && "
                                  f"bash {stage}; rc=$?; rm -f {stage}; exit $rc", timeout)
        return self._run_line(command, timeout)

    def _run_line(self, command: str, timeout: float) -> tuple[int, str, str]:
        timeout = timeout * load_factor()  # a guard against a hang, not a verdict
        with self._lock:
            ident = next(self._ids)
            payload = base64.b64encode(command.encode()).decode()
            self._sock.sendall(f"{ident} {max(1, int(timeout))} {payload}\n".encode())
            deadline = time.monotonic() + timeout + 10
            while True:
                try:
                    line = self._readline(deadline)
                except TimeoutError:
                    raise HarnessError(f"no answer from the guest shell in {timeout + 10:.0f}s "
                                       f"to: {command[:200]}") from None
                if line.startswith(f"@{ident}:".encode()):
                    _, rc, out, err = line.decode().split(":", 3)
                    return (int(rc), base64.b64decode(out).decode(errors="replace"),
                            base64.b64decode(err).decode(errors="replace"))
                if line.startswith(b"@READY:"):
                    raise HarnessError(f"the guest rebooted during: {command[:200]}")

    def succeed(self, command: str, timeout: float = 60) -> str:
        rc, out, err = self.execute(command, timeout)
        self.log(f"succeed: {command[:120]} -> {rc}")
        if rc != 0:
            raise GuestAssertion(f"`{command[:300]}` exited {rc} in the guest, expected 0\n"
                                 f"stdout: {out.strip()[-1500:]}\nstderr: {err.strip()[-1500:]}")
        return out

    def fail(self, command: str, expect: str, timeout: float = 60) -> str:
        """The command must exit non-zero AND its output must contain `expect` (the failure
        it is meant to show): a missing binary or a typo never passes as a refusal."""
        rc, out, err = self.execute(command, timeout)
        self.log(f"fail: {command[:120]} -> {rc}")
        if rc == 0 or expect not in out + err:
            raise GuestAssertion(f"`{command[:300]}` exited {rc}; expected a failure saying {expect!r}\n"
                                 f"stdout: {out.strip()[-1500:]}\nstderr: {err.strip()[-1500:]}")
        return out + err

    def wait_until_succeeds(self, command: str, timeout: float = 60, step: float = 0.5) -> str:
        timeout *= load_factor()
        deadline = time.monotonic() + timeout
        while True:
            rc, out, err = self.execute(command, timeout=max(5, timeout))
            if rc == 0:
                return out
            if time.monotonic() > deadline:
                raise GuestAssertion(f"`{command[:300]}` still fails after {timeout}s; last try exited "
                                     f"{rc}: {(out + err).strip()[-1500:]}")
            time.sleep(step)

    def wait_for_unit(self, unit: str, timeout: float = 120) -> None:
        """Active, or fail fast: a failed unit, or an inactive one with no job pending."""
        timeout *= load_factor()
        deadline = time.monotonic() + timeout
        while True:
            # jobs first: a job that finishes between the two queries then shows as active
            out = self.succeed(f"systemctl list-jobs --no-legend {shlex.quote(unit)} | wc -l; "
                               f"systemctl show -p ActiveState,SubState,Result {shlex.quote(unit)}")
            props = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
            jobs = int(out.splitlines()[0])
            state = props.get("ActiveState")
            if state == "active":
                return
            if state == "failed" or (state == "inactive" and jobs == 0):
                journal = self.execute(f"journalctl -b -u {shlex.quote(unit)} --no-pager | tail -30")[1]
                raise GuestAssertion(f"unit {unit} is {state} ({props}); journal:\n{journal}")
            if time.monotonic() > deadline:
                raise GuestAssertion(f"unit {unit} not active after {timeout}s: {props}")
            time.sleep(0.5)

    # --- power and link ----------------------------------------------------------------
    def reboot(self, timeout: float = 240) -> float:
        """A clean reboot from inside; returns seconds from the reboot request to the new
        boot's shell."""
        old = self.boot_id
        with self._lock:
            self._sock.sendall(f"0 10 {base64.b64encode(b'systemctl reboot').decode()}\n".encode())
        self.started_at = time.monotonic()
        t = self.wait_for_shell(timeout)
        if self.boot_id == old:
            raise HarnessError("reboot: same boot id")
        return t

    def crash(self) -> None:
        """Power loss: QEMU is killed, nothing in the guest runs its shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._sock:
            self._sock.close()
            self._sock = None
        self.log("crashed (QEMU killed)")

    def set_link(self, up: bool) -> None:
        """The data NIC's carrier, from the QEMU monitor; the control console is unaffected."""
        self.monitor(f"set_link data {'on' if up else 'off'}")
        self.link_up = up
        self.log(f"data link {'up' if up else 'down'}")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                raise HarnessError(f"QEMU pid {self.proc.pid} survived SIGKILL")
        if self._sock:
            self._sock.close()
            self._sock = None
        for p in [self.shell_path, self.monitor_path, *self.chardevs.values()]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
