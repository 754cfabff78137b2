"""Golden files are reviewed text. A test only compares; it never writes one. The single,
explicit way to rewrite them is `pytest --update-golden` (then read the diff before
committing: a golden file shows what changed, the oracle tests say whether it is right)."""
from __future__ import annotations

from pathlib import Path


def check_golden(path: Path, text: str, update: bool) -> None:
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: create it with `pytest --update-golden` and review it"
    assert text == path.read_text(), \
        f"{path} differs from the output; if the change is deliberate: pytest --update-golden, review the diff"
