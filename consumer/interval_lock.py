"""Turns for work that any consumer could do but one per interval is enough for (the grace sweep, reconciliation):
a Redis key set only if absent (SET NX), holding the name of the consumer whose turn it is, expiring by itself."""

from __future__ import annotations

import redis

# The turn ends this long (at most a tenth of the interval) before its owner's next try: held for the full
# interval, the owner's own turn could still be there, by a millisecond, when it tries again, and then nobody would
# take a turn for a whole second interval.
MARGIN_MS = 1000


class IntervalLock:
    def __init__(self, client: redis.Redis, key: str, interval_ms: int):
        self.client = client
        self.key = key
        self.hold_ms = interval_ms - min(MARGIN_MS, interval_ms // 10)

    def take(self, owner: str) -> bool:
        """True if the turn is `owner`'s: nobody held it. Never released: it lasts (just under) the interval, so all
        consumers together take about one turn per interval, and a crashed owner's turn ends in time."""
        return bool(self.client.set(self.key, owner, nx=True, px=self.hold_ms))
