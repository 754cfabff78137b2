"""The installed agent in the guest, with the interface of tests/harness/driver.Agent
(config, alive, status, isolate, release, policy_set, audit_events, nft_tables), so the
harness's Story steps and expectations drive it unchanged. Everything goes through the
guest's own `cordon` command and systemd, over the control console.
"""
from __future__ import annotations

import json
import shlex

from tests.harness.driver import AgentCommands, CliError, default_config, to_toml

CONFIG_PATH = "/etc/cordon/agent.toml"
AUDIT_LOGS = ("/var/lib/cordon/audit.log", "/var/log/cordon/audit.log")


class GuestAgent(AgentCommands):
    def __init__(self, lab, unit: str = "cordon.service", **config_kw) -> None:
        self.lab, self.guest, self.unit, self.host = lab, lab.guest, unit, "endpoint"
        self.config = default_config(lab, "/var/lib/cordon", "/run/cordon/control.sock", **config_kw)

    def write_config(self) -> None:
        """The lab's config as /etc/cordon/agent.toml (the package's conffile)."""
        self.guest.succeed(f"cat > {CONFIG_PATH} <<'EOF'\n{to_toml(self.config)}EOF\n"
                           f"chmod 0644 {CONFIG_PATH}")

    # --- the service --------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.guest.execute(f"systemctl is-active --quiet {self.unit}")[0] == 0

    @property
    def pid(self) -> int:
        return int(self.guest.succeed(f"systemctl show -p MainPID --value {self.unit}").strip())

    def restarts(self) -> int:
        return int(self.guest.succeed(f"systemctl show -p NRestarts --value {self.unit}").strip())

    def wait_enforcing(self, timeout: float = 120) -> None:
        """Until `cordon status --json` answers from a running agent whose read-back matches."""
        self.guest.wait_until_succeeds(
            "cordon status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); "
            "sys.exit(0 if d[\"backend\"][\"enforcing\"] is True else 1)'", timeout)

    # --- the CLI -------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, timeout: float = 60):
        rc, out, err = self.guest.execute(shlex.join(["cordon", *args]), timeout)

        class Proc:  # what CliError and callers read from a CompletedProcess
            returncode, stdout, stderr = rc, out, err
        if check and rc != 0:
            raise CliError(list(args), Proc)
        return Proc

    def policy_set(self, doc: dict, check: bool = True):
        self.guest.succeed(f"cat > /tmp/policy.json <<'EOF'\n{json.dumps(doc)}\nEOF")
        return self.cli("policy", "set", "/tmp/policy.json", check=check)

    def audit_events(self, event: str | None = None) -> list[dict]:
        out = self.guest.execute("cat " + " ".join(AUDIT_LOGS) + " 2>/dev/null")[1]
        events = []
        for line in out.splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return [e for e in events if event is None or e.get("event") == event]

    def nft_tables(self) -> str:
        return self.guest.succeed("nft list tables")
