"""A tiny in-memory backend to exercise the engine without a firewall.

Its read-back digests what is *installed*, which tests can make differ from what was
applied (`tamper`, `lossy`), so an `enforcing` assert in the engine tests can fail."""
from __future__ import annotations

from platforms.plan import Plan, atoms_digest
from platforms.base import Backend, BackendError, Capabilities, ReadBack


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, state_dir=None) -> None:
        super().__init__(state_dir)
        self.installed: tuple[bool, frozenset] | None = None  # (dhcp, atoms)
        self.dhcp_servers: tuple[str, ...] = ()  # of the plan installed
        self.applied: list[Plan | None] = []
        self.fail_next = False
        self.lossy = False  # a broken firewall: apply installs all but one atom

    def tamper(self) -> None:
        """Someone else changes the installed rules (drops one atom, or the table)."""
        if self.installed is None:
            return
        dhcp, atoms = self.installed
        self.installed = (dhcp, frozenset(sorted(atoms)[1:])) if atoms else None

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(survives_agent_exit=True, blocks_tamper_while_alive=False,
                            atomic_apply=True, cuts_open_connections=True)

    def render(self, plan: Plan) -> str:
        return "\n".join(map(str, sorted(plan.atoms()))) + "\n"

    def apply(self, plan: Plan) -> None:
        if self.fail_next:
            self.fail_next = False
            raise BackendError("injected failure")
        atoms = plan.atoms()
        self.installed = (plan.dhcp, frozenset(sorted(atoms)[1:]) if self.lossy else atoms)
        self.dhcp_servers = plan.dhcp_servers
        self.applied.append(plan)

    def clear(self) -> None:
        self.installed = None
        self.applied.append(None)

    def read_back(self) -> ReadBack:
        if self.installed is None:
            return ReadBack(present=False)
        return ReadBack(present=True, digest=atoms_digest(*self.installed, self.dhcp_servers))
