"""Enforcement backends, one module per platform, behind platforms.base.Backend."""
from __future__ import annotations

import importlib
import sys

from platforms.base import Backend, BackendError, BackendUnavailable, Capabilities, ReadBack

# name -> "module:Class"; modules are imported only when selected, so that a
# backend's platform-only dependencies never load elsewhere.
BACKENDS = {
    "nftables": "platforms.nftables:NftablesBackend",
    "pf": "platforms.pf:PfBackend",
    "windivert": "platforms.windivert:WinDivertBackend",
}


def auto_name(platform: str = sys.platform) -> str:
    if platform.startswith("linux"):
        return "nftables"
    if platform == "darwin":
        return "pf"
    if platform.startswith("win"):
        return "windivert"
    raise BackendUnavailable(f"no backend for platform {platform!r}")


def backend_class(name: str) -> type[Backend]:
    if name == "auto":
        name = auto_name()
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


__all__ = ["Backend", "BackendError", "BackendUnavailable", "Capabilities", "ReadBack",
           "BACKENDS", "auto_name", "backend_class"]
