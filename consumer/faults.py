"""Fault-injection points for the crash tests: with BILLING_FAULT=<point> in its environment, the
consumer SIGKILLs itself on reaching that point, exactly as a crash there would. Never set it in production."""
from __future__ import annotations

import os
import signal

POINTS = ("before_commit", "after_commit")
_ARMED = os.environ.get("BILLING_FAULT", "")


def checkpoint(point: str) -> None:
    if _ARMED == point:
        os.kill(os.getpid(), signal.SIGKILL)
