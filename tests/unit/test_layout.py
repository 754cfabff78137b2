"""The code's shape matches the architecture: agent/ imports platforms/, never the other
way round; each backend is its own package; no product module grows past the size cap."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "platforms")
MAX_LINES = 400


def _modules(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _imported_top_levels(path: Path) -> set[str]:
    """Top-level packages a module imports, including imports inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_platforms_import_nothing_from_agent():
    offenders = [str(p.relative_to(ROOT)) for p in _modules("platforms")
                 if "agent" in _imported_top_levels(p)]
    assert offenders == [], f"platforms/ must not import agent/: {offenders}"


def test_no_import_cycle_between_top_level_packages():
    edges = {pkg: set() for pkg in PACKAGES}
    for pkg in PACKAGES:
        for p in _modules(pkg):
            edges[pkg] |= (_imported_top_levels(p) & set(PACKAGES)) - {pkg}
    assert not any(b in edges and a in edges[b] for a in edges for b in edges[a]), edges


def test_one_package_per_backend():
    from platforms import BACKENDS
    for name, target in BACKENDS.items():
        module = target.split(":")[0]
        assert module == f"platforms.{name}", target
        assert (ROOT / "platforms" / name / "__init__.py").is_file(), name


def test_no_product_module_over_the_size_cap():
    big = {str(p.relative_to(ROOT)): n for pkg in PACKAGES for p in _modules(pkg)
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines: {big}"
