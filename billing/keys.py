"""Every Redis key name, in one place: what each key holds, and why it is named as it is.

Two families. The stream's own keys hang off STREAM_KEY (`<STREAM_KEY>:seen:<event id>`, ...), so a deployment
with its own stream has its own of those. The others start with KEY_PREFIX (`billing` by default), so two
deployments sharing one Redis keep apart by giving each its own KEY_PREFIX (and STREAM_KEY, DEAD_LETTER_KEY).
With the default settings every name is the one earlier releases used, so an upgrade keeps its data.

Two layouts. The untagged one (the default: one partition, a Redis that is not a cluster) names the keys as earlier
releases did. The tagged one (a Redis Cluster URL, or STREAM_PARTITIONS above 1) gives each partition p of the stream
a family of keys that share one hash tag, so the enqueue script and the settle MULTI stay within one slot:
`{<STREAM_KEY>}` with one partition, `{<STREAM_KEY>:<p>}` with several (the partition's stream), and
`<that>:seen:<event id>`, `<that>:failures`, `<that>:dead` (the partition's dead letters; DEAD_LETTER_KEY names the
dead letters only in the untagged layout). An event goes to partition `partition_of(event id)`, so its dedupe mark
is in the slot of the stream it is queued on. The two entitlement-cache keys of a community share a tag on the
community id (`<KEY_PREFIX>:entitlement-cache:{<community>}:answer`, `...:token`), so the cache's scripts stay in
one slot too."""

from __future__ import annotations

import dataclasses
import zlib


@dataclasses.dataclass(frozen=True)
class StreamKeys:
    """The keys of one partition of the stream: its stream, the dedupe marks of the events routed to it, its
    failure counts and its dead letters. In the tagged layout they all share the partition's hash tag."""

    partition: int
    stream: str  # the partition's stream of queued events
    dead_letters: str  # the partition's dead letters (DEAD_LETTER_KEY in the untagged layout)

    def seen(self, event_id: str) -> str:
        """Set while an event is queued or processed (value "queued" or "processed"): the fast dedupe path."""
        return f"{self.stream}:seen:{event_id}"

    @property
    def failures(self) -> str:
        """A hash: for each pending entry whose handler failed, `<count>:<first failure, epoch ms>`; its entry
        becomes a dead letter when the count reaches MAX_DELIVERIES."""
        return f"{self.stream}:failures"


def partition_of(event_id: str, partitions: int) -> int:
    """The partition an event is queued on: CRC-32 of its id (UTF-8) modulo the number of partitions. Stable
    across processes and releases (tests pin it): every receiver, and a backfill, must route an event to the
    partition its dedupe mark is in."""
    return zlib.crc32(event_id.encode("utf-8")) % partitions if partitions > 1 else 0


@dataclasses.dataclass(frozen=True)
class Keys:
    prefix: str  # KEY_PREFIX
    stream: str  # STREAM_KEY: the stream of queued events (the fields are CONTRACT.md's)
    dead_letters: str  # DEAD_LETTER_KEY: the stream of entries whose handler failed MAX_DELIVERIES times
    partitions: int = 1  # STREAM_PARTITIONS
    tagged: bool = False  # the hash-tagged layout: a Redis Cluster, or more than one partition

    # --- the stream's own keys ----------------------------------------------------------------------------

    def partition(self, p: int) -> StreamKeys:
        """The keys of partition `p` (0 to partitions - 1)."""
        if not 0 <= p < self.partitions:
            raise ValueError(f"no partition {p}: STREAM_PARTITIONS is {self.partitions}")
        if not self.tagged:
            return StreamKeys(p, self.stream, self.dead_letters)
        tag = f"{{{self.stream}}}" if self.partitions == 1 else f"{{{self.stream}:{p}}}"
        return StreamKeys(p, tag, f"{tag}:dead")

    @property
    def all_partitions(self) -> tuple[StreamKeys, ...]:
        return tuple(self.partition(p) for p in range(self.partitions))

    def partition_of(self, event_id: str) -> int:
        """The partition event `event_id` is queued on (see `partition_of`)."""
        return partition_of(event_id, self.partitions)

    def seen(self, event_id: str) -> str:
        """The dedupe mark of an event (StreamKeys.seen), in the partition the event is routed to."""
        return self.partition(self.partition_of(event_id)).seen(event_id)

    @property
    def failures(self) -> str:
        """The failure counts of the first partition (the only one, by default): see StreamKeys.failures."""
        return self.partition(0).failures

    @property
    def backfill_cursor(self) -> str:
        """Where `python -m consumer backfill` keeps how far it got (JSON: its window, types and the (created, id)
        of the last event it handled), so an interrupted run resumes after it."""
        return f"{self._stream_tag}:backfill:cursor"

    @property
    def reconcile_lock(self) -> str:
        """Held by the consumer that reconciles from Stripe's Events API this interval (one at a time)."""
        return f"{self._stream_tag}:reconcile:lock"

    @property
    def _stream_tag(self) -> str:
        return f"{{{self.stream}}}" if self.tagged else self.stream

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
        if self.tagged:
            return f"{self.prefix}:entitlement-cache:{{{community_id}}}:answer"
        return f"{self.prefix}:entitlement-cache:answer:{community_id}"

    def entitlement_token(self, community_id: str) -> str:
        """The guard of one community's cache entry: a random token a reader sets (if absent) when it misses and
        must still find there to store the answer it read from the database. Every invalidation deletes it, so a
        reader that read the database before a change can never cache its older answer after it."""
        if self.tagged:
            return f"{self.prefix}:entitlement-cache:{{{community_id}}}:token"
        return f"{self.prefix}:entitlement-cache:token:{community_id}"

    def entitlements(self, community_id: str) -> tuple[str, str]:
        """Both of one community's cache keys: its answer, then its guard token."""
        return self.entitlement_answer(community_id), self.entitlement_token(community_id)
