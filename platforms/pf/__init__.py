"""macOS backend: a pf anchor loaded through pfctl.

  render.py   Plan -> pf anchor text, and the anchor listing -> plan atoms (pure)
  backend.py  PfBackend: runs pfctl, keeps the pf enable token, kills disallowed states
"""
from platforms.pf.backend import PfBackend

__all__ = ["PfBackend"]
