"""Fault-injection points for the crash tests. Never set BILLING_FAULT in production.

- BILLING_FAULT=<point>: the consumer SIGKILLs itself on reaching that point, exactly as a crash there would.
- BILLING_FAULT=stop:<point>: the consumer SIGSTOPs itself there, the first time it gets there, as a paused
  container or a network partition would freeze it: its open transaction and its locks stay where they are
  until someone sends SIGCONT (then it carries on from that very point) or SIGKILL."""

from __future__ import annotations

import os
import signal

POINTS = ("before_commit", "after_commit")
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


def _parse(value: str) -> tuple[str, signal.Signals | None]:
    action, _, point = value.rpartition(":")
    return point, ACTIONS.get(action or "kill")


_POINT, _SIGNAL = _parse(os.environ.get("BILLING_FAULT", ""))


def checkpoint(point: str) -> None:
    global _SIGNAL
    if point == _POINT and _SIGNAL is not None:
        signum, _SIGNAL = _SIGNAL, None  # once: a resumed consumer goes on normally
        os.kill(os.getpid(), signum)
