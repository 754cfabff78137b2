"""A tiny in-memory backend to exercise the engine without a firewall."""
from __future__ import annotations

from platforms.plan import Plan, atoms_digest
from platforms.base import Backend, BackendError, Capabilities, ReadBack


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, state_dir=None) -> None:
        super().__init__(state_dir)
        self.installed: tuple[bool, frozenset] | None = None  # (dhcp, atoms)
        self.applied: list[Plan | None] = []
        self.fail_next = False

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
        self.installed = (plan.dhcp, plan.atoms())
        self.applied.append(plan)

    def clear(self) -> None:
        self.installed = None
        self.applied.append(None)

    def read_back(self) -> ReadBack:
        if self.installed is None:
            return ReadBack(present=False)
        return ReadBack(present=True, digest=atoms_digest(*self.installed))
