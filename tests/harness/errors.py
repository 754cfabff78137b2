"""Two kinds of failure, kept apart so a red test says whose fault it is.

`HarnessError`: the lab itself is broken (a responder died, a namespace cannot be made,
a process the harness did not start is in a lab namespace). Nothing was learned about
Cordon. `CordonWrong` (an AssertionError): the lab worked and Cordon did the wrong thing.
"""
from __future__ import annotations


class HarnessError(RuntimeError):
    """The lab is broken; the test learned nothing about Cordon."""


class CordonWrong(AssertionError):
    """The lab worked and Cordon's behaviour differs from the contract."""
