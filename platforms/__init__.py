"""Enforcement backends, one subpackage per platform, behind platforms.base.Backend."""
from __future__ import annotations

import importlib
import sys

from platforms.base import (Backend, BackendError, BackendUnavailable, Capabilities, Probe, ReadBack,
                            Support)

# name -> "module:Class"; modules are imported only when selected, so that a
# backend's platform-only dependencies never load elsewhere.
BACKENDS = {
    "nftables": "platforms.nftables:NftablesBackend",
    "pf": "platforms.pf:PfBackend",
    "windivert": "platforms.windivert:WinDivertBackend",
}
# The backends auto-selection tries on each platform, in order.
CANDIDATES = {"linux": ("nftables",), "darwin": ("pf",), "win32": ("windivert",)}


def candidates(platform: str = sys.platform) -> tuple[str, ...]:
    for prefix, names in CANDIDATES.items():
        if platform.startswith(prefix):
            return names
    raise BackendUnavailable(f"no backend for platform {platform!r}")


def load(name: str) -> type[Backend]:
    try:
        target = BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"backend {name!r} is not available: {exc}") from exc
    return getattr(module, cls_name)


def auto_name(platform: str = sys.platform) -> str:
    """The first of this platform's backends whose own check says it can run here."""
    reasons = []
    for name in candidates(platform):
        try:
            support = load(name).is_supported()
        except BackendUnavailable as exc:
            reasons.append(str(exc))
            continue
        if support:
            return name
        reasons.append(f"{name}: {support.reason}")
    raise BackendUnavailable("no backend can run here: " + "; ".join(reasons))


def backend_class(name: str, *, check_support: bool = True) -> type[Backend]:
    """The backend to run. With check_support, the backend's is_supported() must say yes
    (BackendUnavailable names why not); without, "auto" means this platform's first
    backend (for pure uses such as rendering)."""
    if name == "auto":
        name = auto_name() if check_support else candidates()[0]
        return load(name)
    cls = load(name)
    if check_support and not (support := cls.is_supported()):
        raise BackendUnavailable(f"backend {name!r} cannot run here: {support.reason}")
    return cls


__all__ = ["Backend", "BackendError", "BackendUnavailable", "Capabilities", "Probe", "ReadBack",
           "Support", "BACKENDS", "CANDIDATES", "auto_name", "backend_class", "candidates", "load"]
