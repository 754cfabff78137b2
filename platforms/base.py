"""The one small interface every enforcement backend implements.

A backend renders a `Plan` (platforms.plan) and applies it atomically, clears it, and
reads back what the firewall really holds. It never sees a policy or a command.

Every method the engine or the daemon calls on a backend is declared here; where a
platform has nothing to do, the default says so.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Iterable

from platforms.plan import Plan


class BackendError(RuntimeError):
    """The firewall refused or failed a change; nothing of it is in force."""


class BackendUnavailable(BackendError):
    """The backend cannot run on this machine (wrong OS, missing privileges or tools)."""


@dataclass(frozen=True)
class Capabilities:
    """What the backend's design gives, declared. What depends on the running kernel is
    probed instead (`Backend.probe`) and recorded with its evidence."""

    survives_agent_exit: bool      # rules stay in force if the agent dies (kill -9)
    blocks_tamper_while_alive: bool  # other root processes cannot flush the rules
    atomic_apply: bool
    cuts_open_connections: bool
    change_events: bool = False    # wait_for_change blocks on real firewall events
    notes: str = ""


@dataclass(frozen=True)
class Support:
    """Can this backend run here? `reason` says why not, or what showed that it can."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True)
class Probe:
    """One kernel-dependent capability, tried in the target namespace: a scratch object
    with the feature was created, read back and deleted. `evidence` says what was seen."""

    name: str
    present: bool
    evidence: str


@dataclass(frozen=True)
class ReadBack:
    """What is really in force, as read from the firewall (not what the agent believes)."""

    present: bool                 # any Cordon rules installed at all
    digest: str | None = None     # Plan.digest() of what is installed, when readable
    details: dict = field(default_factory=dict)

    @property
    def problems(self) -> list:
        """What the read-back found wrong, in words (empty when it found nothing)."""
        return self.details.get("problems", [])

    def enforces(self, plan: Plan | None) -> bool:
        if plan is None:
            return not self.present
        return self.present and self.digest == plan.digest()


class Backend(abc.ABC):
    name: str = "abstract"

    def __init__(self, state_dir: str | None = None) -> None:
        # Where a backend may keep what it needs across restarts (e.g. pf's token).
        self.state_dir = state_dir
        self._probes: tuple[Probe, ...] | None = None

    @classmethod
    def is_supported(cls) -> Support:
        """Can this backend run on this machine, in the caller's namespace? Used by
        auto-selection; it must try the real thing (open the socket, run the tool), not
        only look for a binary. Default: no."""
        return Support(False, f"backend {cls.name!r} has no support check")

    CAPABILITIES: ClassVar[Capabilities]

    @classmethod
    def capabilities(cls) -> Capabilities:
        """What this backend's design gives (declared, per class)."""
        return cls.CAPABILITIES

    def probe(self) -> tuple[Probe, ...]:
        """Try each kernel-dependent capability once, in the target namespace; later
        calls return the recorded results. Raise BackendError if probing itself fails."""
        if self._probes is None:
            self._probes = tuple(self._run_probes())
        return self._probes

    def _run_probes(self) -> Iterable[Probe]:
        """Default: nothing of this backend depends on the running kernel."""
        return ()

    @abc.abstractmethod
    def render(self, plan: Plan) -> str:
        """The exact text of what would be installed (for `cordon rules`). Pure."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> None:
        """Make `plan` the only thing in force, in one atomic step: either all of it is
        in force afterwards or the previous state is. Raise BackendError on failure."""

    def refresh(self, plan: Plan) -> None:
        """Like apply, for a plan that differs from the one in force only in which
        addresses host exceptions resolve to and when flows expire (DESIGN §11). A
        backend that can changes set elements only (and renews their timeouts); the
        default, for backends without timeouts, applies the whole plan when what it
        allows differs from what is in force."""
        if not self.read_back().enforces(plan):
            self.apply(plan)

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove everything Cordon installed. Idempotent."""

    @abc.abstractmethod
    def read_back(self) -> ReadBack:
        """Read what the firewall holds now."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to `timeout` s for a change of the firewall made by another process;
        True if one happened. Only meaningful where capabilities().change_events; the
        default (no events on this platform) returns False at once and the daemon polls
        read_back instead."""
        return False

    def close(self) -> None:
        """Release handles. Must NOT lift isolation where the platform allows."""
