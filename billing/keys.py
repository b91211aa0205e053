"""Every Redis key name, in one place: what each key holds, and why it is named as it is.

Two families. The stream's own keys hang off STREAM_KEY (`<STREAM_KEY>:seen:<event id>`, ...), so a deployment
with its own stream has its own of those. The others start with KEY_PREFIX (`billing` by default), so two
deployments sharing one Redis keep apart by giving each its own KEY_PREFIX (and STREAM_KEY, DEAD_LETTER_KEY).
With the default settings every name is the one earlier releases used, so an upgrade keeps its data."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Keys:
    prefix: str  # KEY_PREFIX
    stream: str  # STREAM_KEY: the stream of queued events (the fields are CONTRACT.md's)
    dead_letters: str  # DEAD_LETTER_KEY: the stream of entries whose handler failed MAX_DELIVERIES times

    # --- the stream's own keys ----------------------------------------------------------------------------

    def seen(self, event_id: str) -> str:
        """Set while an event is queued or processed (value "queued" or "processed"): the fast dedupe path."""
        return f"{self.stream}:seen:{event_id}"

    @property
    def failures(self) -> str:
        """A hash: for each pending entry whose handler failed, `<count>:<first failure, epoch ms>`; its entry
        becomes a dead letter when the count reaches MAX_DELIVERIES."""
        return f"{self.stream}:failures"

    @property
    def backfill_cursor(self) -> str:
        """Where `python -m consumer backfill` keeps how far it got (JSON: its window, types and the (created, id)
        of the last event it handled), so an interrupted run resumes after it."""
        return f"{self.stream}:backfill:cursor"

    @property
    def reconcile_lock(self) -> str:
        """Held by the consumer that reconciles from Stripe's Events API this interval (one at a time)."""
        return f"{self.stream}:reconcile:lock"

    # --- the deployment's keys ----------------------------------------------------------------------------

    @property
    def sweep_lock(self) -> str:
        """Held by the consumer that ends expired grace periods this interval (one at a time)."""
        return f"{self.prefix}:sweep:lock"

    # The entitlement cache's keys. Each kind of key has its own prefix, and the kind comes before the id, so no
    # community id (whatever it contains) can make one kind's key equal another kind's, or another community's.
    # Nor one of the keys of the cache before these (`billing:entitlements:<id>`, `billing:entitlements:gen:<id>`),
    # which may still be there, for a while, after an upgrade.

    def entitlement_answer(self, community_id: str) -> str:
        """The cached entitlements answer of one community (JSON); deleted after every committed change to it."""
        return f"{self.prefix}:entitlement-cache:answer:{community_id}"

    def entitlement_token(self, community_id: str) -> str:
        """The guard of one community's cache entry: a random token a reader sets (if absent) when it misses and
        must still find there to store the answer it read from the database. Every invalidation deletes it, so a
        reader that read the database before a change can never cache its older answer after it."""
        return f"{self.prefix}:entitlement-cache:token:{community_id}"

    def entitlements(self, community_id: str) -> tuple[str, str]:
        """Both of one community's cache keys: its answer, then its guard token."""
        return self.entitlement_answer(community_id), self.entitlement_token(community_id)
