"""Windows backend: WinDivert filters and a per-flow decider, through pydivert.

  filter.py   Plan -> WinDivert filter texts (pure; no pydivert import)
  backend.py  WinDivertBackend: the divert handles and the decider loop
"""
from platforms.windivert.backend import WinDivertBackend

__all__ = ["WinDivertBackend"]
