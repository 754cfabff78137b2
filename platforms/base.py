"""The one small interface every enforcement backend implements.

A backend renders a `Plan` (platforms.plan) and applies it atomically, clears it, and
reads back what the firewall really holds. It never sees a policy or a command.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

from platforms.plan import Plan


class BackendError(RuntimeError):
    """The firewall refused or failed a change; nothing of it is in force."""


class BackendUnavailable(BackendError):
    """The backend cannot run on this machine (wrong OS, missing privileges or tools)."""


@dataclass(frozen=True)
class Capabilities:
    survives_agent_exit: bool      # rules stay in force if the agent dies (kill -9)
    blocks_tamper_while_alive: bool  # other root processes cannot flush the rules
    atomic_apply: bool
    cuts_open_connections: bool
    notes: str = ""


@dataclass(frozen=True)
class ReadBack:
    """What is really in force, as read from the firewall (not what the agent believes)."""

    present: bool                 # any Cordon rules installed at all
    digest: str | None = None     # Plan.digest() of what is installed, when readable
    details: dict = field(default_factory=dict)

    def enforces(self, plan: Plan | None) -> bool:
        if plan is None:
            return not self.present
        return self.present and self.digest == plan.digest()


class Backend(abc.ABC):
    name: str = "abstract"

    def __init__(self, state_dir: str | None = None) -> None:
        # Where a backend may keep what it needs across restarts (e.g. pf's token).
        self.state_dir = state_dir

    @classmethod
    @abc.abstractmethod
    def capabilities(cls) -> Capabilities: ...

    @abc.abstractmethod
    def render(self, plan: Plan) -> str:
        """The exact text of what would be installed (for `cordon rules`). Pure."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> None:
        """Make `plan` the only thing in force, in one atomic step: either all of it is
        in force afterwards or the previous state is. Raise BackendError on failure."""

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove everything Cordon installed. Idempotent."""

    @abc.abstractmethod
    def read_back(self) -> ReadBack:
        """Read what the firewall holds now."""

    def close(self) -> None:
        """Release handles. Must NOT lift isolation where the platform allows."""
