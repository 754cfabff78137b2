"""Drive the real agent: `cordon run` inside the lab's endpoint namespace with a
throwaway config and state dir, and the real CLI for every command (DESIGN §2).

    agent = Agent(lab, sensor_type="endpoint_sensor").start()
    agent.policy_set(doc); agent.isolate(strict=False, reason="IR-1"); agent.status()
    agent.kill(signal.SIGKILL); agent.restart(); agent.audit_events()
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from . import netns
from .errors import CordonWrong
from .lab import REPO_ROOT
from .verbs import Verbs
from .waits import scaled, wait_until

# DESIGN §2 (CLI): exit codes by name, for `fail(exit=...)`.
EXIT_CODES = {"failure": 1, "invalid input": 2, "not running": 3, "not permitted": 4}


class CliError(RuntimeError):
    def __init__(self, argv, proc: subprocess.CompletedProcess) -> None:
        super().__init__(f"cordon {' '.join(argv)} exited {proc.returncode}: "
                         f"{(proc.stderr or proc.stdout).strip()[:800]}")
        self.returncode = proc.returncode
        self.proc = proc


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(doc: dict) -> str:
    """Top-level keys and one level of tables: all the agent config needs."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def default_config(lab, state_dir: str, control_socket: str, sensor_type: str = "endpoint_sensor",
                   backend: str = "auto", vendor_port: int = 443, dns: bool = True,
                   dhcp: bool = True, max_per_direction: int = 50, lease_file: str | None = None) -> dict:
    """`lease_file`: the only DHCP lease file the agent reads (so a lab agent never learns
    the machine's own DHCP server); absent from the config when None."""
    return {
        "sensor_type": sensor_type, "backend": backend,
        "state_dir": state_dir, "control_socket": control_socket,
        "vendor": {
            "endpoints": [{"address": lab.addr("vendor", 4), "protocol": "tcp", "ports": str(vendor_port)}],
            "dns_servers": [lab.addr("dns", 4)] if dns else [],
            "dhcp": dhcp,
            **({"dhcp_lease_files": [lease_file]} if lease_file else {}),
        },
        "exceptions": {"max_per_direction": max_per_direction},
    }


class AgentCommands(Verbs):
    """The CLI verbs over `self.cli(*args, check=, timeout=)`, shared by the netns Agent and
    the VM tier's GuestAgent (tests/vm/agent.py): only how `cli` runs `cordon` differs.
    The asserting verbs (tests.harness.verbs) run `cordon ARGS`:
    `agent.succeed("isolate")`, `agent.fail("release", exit="not permitted", match="token")`."""

    EXIT_NAMES = EXIT_CODES

    def _execute(self, args: tuple, timeout: float):
        return self.cli(*args, check=False, timeout=timeout)

    def _describe(self, args: tuple) -> str:
        return shlex.join(["cordon", *args])

    def status(self) -> dict:
        """`cordon status --json`; also when the agent is down (exit 3 still prints JSON)."""
        p = self.cli("status", "--json", check=False)
        if p.returncode not in (0, 3):
            raise CliError(["status", "--json"], p)
        st = json.loads(p.stdout)
        st["_exit"] = p.returncode
        return st

    def isolate(self, strict: bool = False, reason: str | None = None) -> str:
        args = ["isolate"] + (["--strict"] if strict else []) + (["--reason", reason] if reason else [])
        return self.cli(*args).stdout

    def release(self, reason: str | None = None) -> str:
        return self.cli("release", *(["--reason", reason] if reason else [])).stdout


class Agent(AgentCommands):
    """One agent in the lab's endpoint. Keyword arguments go to `default_config`;
    `config=` replaces the whole config dict (state_dir/control_socket are filled in)."""

    def __init__(self, lab, config: dict | None = None, host: str = "endpoint", **config_kw) -> None:
        self.lab, self.host = lab, host
        self.dir = tempfile.mkdtemp(prefix="agent-", dir=lab.rundir or None)
        state_dir, sock = os.path.join(self.dir, "state"), os.path.join(self.dir, "control.sock")
        # the DHCP lease the agent learns its DHCP server from (a test writes it; none = none)
        self.lease_path = os.path.join(self.dir, "dhclient.leases")
        if config is None:
            config = default_config(lab, state_dir, sock, lease_file=self.lease_path, **config_kw)
        self.config = dict({"state_dir": state_dir, "control_socket": sock}, **config)
        self.config_path = os.path.join(self.dir, "agent.toml")
        with open(self.config_path, "w") as f:
            f.write(to_toml(self.config))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                         CORDON_CONFIG=self.config_path)

    @property
    def audit_path(self) -> str:
        return os.path.join(self.config["state_dir"], "audit.log")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "agent.stderr")

    def argv(self, *args: str) -> list[str]:
        return netns.exec_argv(self.lab.ns(self.host), sys.executable, "-m", "agent.cli", *args)

    # --- the agent process ------------------------------------------------------
    def start(self, timeout: float = 15) -> "Agent":
        self.launch()
        self.wait_ready(timeout)
        return self

    def launch(self) -> "Agent":
        """Start `cordon run` without waiting for it (many at once: a fleet)."""
        if self.alive:
            raise RuntimeError("agent already running")
        self.starts += 1
        log = open(self.log_path, "a")
        # lab.spawn: its own process group, which the lab's teardown kills by pid.
        self.proc = self.lab.spawn(self.host, sys.executable, "-m", "agent.cli", "run",
                                   "--config", self.config_path, env=self._env, cwd=REPO_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        """Until `cordon status` answers (exit 0); fails at once if the agent exits."""
        try:
            wait_until(lambda: self.cli("status", "--json", check=False).returncode == 0, timeout,
                       "agent ready", abort=self.exit_reason, error=RuntimeError)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.stderr_tail()}") from None

    def exit_reason(self) -> str | None:
        """Why the agent cannot answer any more (it exited), or None while it runs."""
        if self.proc is not None and self.proc.poll() is not None:
            return f"agent exited with {self.proc.returncode}"
        return None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive else None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10) -> int:
        """Signal the agent and wait for it to exit (`timeout` x load); its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(scaled(timeout))

    def restart(self, timeout: float = 15) -> "Agent":
        if self.alive:
            self.kill(signal.SIGTERM)
        return self.start(timeout)

    def close(self) -> None:
        if self.alive:
            try:
                self.kill(signal.SIGTERM, timeout=5)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # --- the CLI -------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
        """`cordon ARGS --config PATH` in the endpoint namespace (`timeout` x load)."""
        argv = [*args, "--config", self.config_path]
        proc = subprocess.run(self.argv(*argv), env=self._env, cwd=REPO_ROOT, capture_output=True,
                              text=True, input=input, timeout=scaled(timeout))
        if check and proc.returncode != 0:
            raise CliError(argv, proc)
        return proc

    def policy_set(self, doc: dict, check: bool = True) -> subprocess.CompletedProcess:
        path = os.path.join(self.dir, f"policy-{time.monotonic_ns()}.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        return self.cli("policy", "set", path, check=check)

    def audit_events(self, event: str | None = None) -> list[dict]:
        """The agent's audit log (one JSON object per line), optionally one event kind."""
        try:
            with open(self.audit_path) as f:
                events = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [e for e in events if event is None or e.get("event") == event]

    def wait_for_event(self, event: str, count: int = 1, timeout: float = 30) -> list[dict]:
        """Until the audit log holds `count` `event`s (x load deadline); returns them all.
        Fails at once if the agent exits meanwhile (it can write no more)."""
        def enough():
            evs = self.audit_events(event)
            return evs if len(evs) >= count else None
        try:
            return wait_until(enough, timeout, f"{self.host}: audit event {event} x{count}",
                              abort=self.exit_reason, error=CordonWrong)
        except CordonWrong as exc:
            raise CordonWrong(f"{exc}\n{self.stderr_tail()}") from None

    def nft_tables(self) -> str:
        """`nft list tables` in the endpoint: the independent view of what is installed."""
        return self.lab.run(self.host, "nft", "list", "tables").stdout
