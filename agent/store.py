"""The durable state: written atomically (temp file, fsync, rename, fsync dir) before
any command is acknowledged; read back strictly, never silently reset.

A save has two phases so that the engine can refuse a change the disk cannot hold
before it touches the firewall: `prepare` writes and fsyncs a temp file (a full disk
or a read-only dir fails here), `commit` renames it into place."""
from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from agent.policy import Policy
from platforms.durable import fsync_dir
from platforms.plan import MAX_DHCP_SERVERS, check_dhcp_server, dhcp_servers_sorted

STATE_FILE = "state.json"
FORMAT = 1


class StateCorrupt(Exception):
    """The state file exists but cannot be trusted. The agent must fail closed."""


class AgentState(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT
    state: Literal["normal", "isolated"] = "normal"
    mode: Literal["standard", "strict"] | None = None
    since: str | None = None
    reason: str | None = None
    stored_policy: Policy | None = None
    # The policy that isolation enforces. endpoint_sensor: follows stored_policy at once;
    # security_agent: latched at `isolate`, so a newer stored policy waits as pending.
    isolation_policy: Policy | None = None
    # The DHCP servers of the leases the host held when isolation began (agent/dhcp_leases.py):
    # pinned for the isolation, so a lease file written while isolated changes nothing.
    dhcp_servers: tuple[str, ...] = ()

    @field_validator("dhcp_servers")
    @classmethod
    def _servers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            check_dhcp_server(s)
        if len(v) > MAX_DHCP_SERVERS or v != dhcp_servers_sorted(v):
            raise ValueError(f"at most {MAX_DHCP_SERVERS} unique servers, sorted")
        return v

    @property
    def stored_version(self) -> int:
        return self.stored_policy.version if self.stored_policy else 0

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE

    def load(self) -> AgentState:
        """The persisted state; a fresh `normal` state if none was ever written."""
        return self.load_if_present() or AgentState()

    def load_if_present(self) -> AgentState | None:
        """The persisted state, or None when there is no state file."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateCorrupt(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            return AgentState.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise StateCorrupt(f"{self.path} is corrupt ({where}: {first['msg']})") from None

    def save(self, state: AgentState) -> None:
        self.prepare(state).commit()

    def prepare(self, state: AgentState) -> "PreparedSave":
        """Write `state` to a temp file and fsync it; nothing visible changes yet.
        Raises OSError (ENOSPC, EROFS, EACCES...) before anything is in place."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        data = state.to_bytes()
        fd, tmp = tempfile.mkstemp(prefix=".state.", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # status is readable by any local user
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return PreparedSave(self, Path(tmp))

    def quarantine(self) -> Path | None:
        """Move an untrusted state file aside (kept for forensics), so a fresh one can be written."""
        if not self.path.exists():
            return None
        aside = self.path.with_name(f"{STATE_FILE}.corrupt-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        os.replace(self.path, aside)
        return aside


class PreparedSave:
    """A state written and fsynced to a temp file, waiting to be renamed into place."""

    def __init__(self, store: Store, tmp: Path) -> None:
        self.store = store
        self.tmp = tmp

    def commit(self) -> None:
        try:
            os.replace(self.tmp, self.store.path)
        except BaseException:
            self.abort()
            raise
        fsync_dir(self.store.dir)

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)
