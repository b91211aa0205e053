"""Settling a committed batch in Redis (EventStream.settle): dedupe marks, cache invalidations, dead letters,
failure counts and acknowledgements in one atomic step; and, when Redis is full, what can be settled without
memory.

In the hash-tagged layout (billing/keys.py: a Redis Cluster, or STREAM_PARTITIONS > 1) no MULTI may span two
slots, and the entitlement-cache keys are in their communities' slots, not the stream's. So there the changed
communities' cache keys are deleted first, in a round trip of their own (a pipeline of DELs), and only then does
each partition the batch touched get its MULTI (acknowledgements, dedupe marks, failure counts, dead letters),
one per partition. The order is what makes this safe: the cache is dropped before any entry is acknowledged.
A crash (or an error) after the DELs and before a partition's MULTI leaves that partition's entries pending,
without their processed marks; they are redelivered (or reclaimed), the batch finds their events already applied
in webhook_events and makes them duplicates carrying the community each one changed (webhook_events.community_id,
kept for this), and the duplicates' settlement drops those communities' cache again. Dropping a cache entry
more often than needed costs a database read; the other order could acknowledge an entry whose community's
stale answer then stays cached. A crash between two partitions' MULTIs is the same story for the later ones."""

from __future__ import annotations

import dataclasses
import logging

import redis

from billing.keys import Keys, StreamKeys
from billing.redis_io import invalidate_entitlements, is_memory_refusal
from consumer.dead_letters import DeadLetters
from consumer.entries import DeadLetter, Failure, Settlement, split_ref

log = logging.getLogger(__name__)


class Settler:
    def __init__(self, client: redis.Redis, keys: Keys, group: str, dedupe_ttl_seconds: int, dead_letters: DeadLetters):
        self.client = client
        self.keys = keys
        self.group = group
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self.dead_letters = dead_letters
        self._without_memory = client.register_script(_SETTLE_WITHOUT_MEMORY)

    def settle(self, settlement: Settlement) -> bool:
        """After the commit, in one atomic step (one round trip): remember the events as processed, drop the
        changed communities' cached entitlements, move dead letters, count failures, acknowledge.

        When Redis refuses that for memory (at maxmemory, with noeviction, it queues nothing in a MULTI),
        settles what needs no memory, in one script: drops the cached entitlements, clears failure counts and
        acknowledges the entries that are done, so the stream can still be trimmed and Redis can get out of
        being full. No processed marks then (an event's mark is only ever written
        with its batch's invalidations), no failure counts, and dead entries stay pending until their dead
        letter can be written. Returns False in that case, True when everything was settled."""
        try:
            self._settle_all(settlement)
            return True
        except redis.ResponseError as exc:
            if not is_memory_refusal(exc):
                raise
            log.warning(
                "Redis refused the settlement for memory (%s); acknowledging %d done entries without "
                "their dedupe marks, %d failed and %d dead entries stay pending",
                exc,
                len(settlement.ack_ids),
                len(settlement.failures),
                len(settlement.dead),
            )
        self._settle_without_memory(settlement)
        return False

    def _settle_all(self, settlement: Settlement) -> None:
        if not self.keys.tagged:  # everything in one MULTI, as it always was
            pipe = self.client.pipeline(transaction=True)
            self._queue_partition(pipe, self.keys.partition(0), settlement)
            for community_id in settlement.changed_communities:
                invalidate_entitlements(pipe, self.keys, community_id)
            pipe.execute()
            return
        self._drop_caches(settlement)  # first: see the module's docstring
        for part, share in self._by_partition(settlement):
            pipe = self.client.pipeline(transaction=True)
            self._queue_partition(pipe, part, share)
            pipe.execute()

    def _queue_partition(self, pipe: redis.client.Pipeline, part: StreamKeys, settlement: Settlement) -> None:
        """One partition's share of a settlement (ids as its stream has them, the dedupe marks in its slot)."""
        for event_id in settlement.processed_event_ids:
            pipe.set(part.seen(event_id), "processed", ex=self.dedupe_ttl_seconds)
        for dead in settlement.dead:
            self.dead_letters.add(pipe, dead, part)
        if settlement.failures:
            pipe.hset(
                part.failures,
                mapping={k: f"{v.count}:{v.first_failed_ms}" for k, v in settlement.failures.items()},
            )
        cleared = settlement.cleared_failures + tuple(d.entry.entry_id for d in settlement.dead)
        if cleared:
            pipe.hdel(part.failures, *cleared)
        ack_ids = settlement.ack_ids + tuple(d.entry.entry_id for d in settlement.dead)
        if ack_ids:
            pipe.xack(part.stream, self.group, *ack_ids)

    def _drop_caches(self, settlement: Settlement) -> None:
        """The changed communities' cache keys, in a round trip of their own (not a MULTI: each community's two
        keys are in a slot of their own; DEL never fails on a reply, not even when Redis is full)."""
        if settlement.changed_communities:
            pipe = self.client.pipeline(transaction=False)
            for community_id in settlement.changed_communities:
                invalidate_entitlements(pipe, self.keys, community_id)
            pipe.execute()

    def _by_partition(self, settlement: Settlement) -> list[tuple[StreamKeys, Settlement]]:
        """A settlement split by partition, in the partitions' order, with ids as each partition's stream has them:
        entries by the partition they were read from, dedupe marks by the partition their event is routed to (its
        slot). No invalidations in the shares: they go first, on their own."""
        shares: dict[int, _Share] = {}
        for ref in settlement.ack_ids:
            p, entry_id = split_ref(ref)
            shares.setdefault(p, _Share()).ack_ids.append(entry_id)
        for event_id in settlement.processed_event_ids:
            shares.setdefault(self.keys.partition_of(event_id), _Share()).marks.append(event_id)
        for ref, failure in settlement.failures.items():
            p, entry_id = split_ref(ref)
            shares.setdefault(p, _Share()).failures[entry_id] = failure
        for dead in settlement.dead:
            p, entry_id = split_ref(dead.entry.entry_id)
            entry = dataclasses.replace(dead.entry, entry_id=entry_id)
            shares.setdefault(p, _Share()).dead.append(DeadLetter(entry, dead.error, dead.failure))
        for ref in settlement.cleared_failures:
            p, entry_id = split_ref(ref)
            shares.setdefault(p, _Share()).cleared.append(entry_id)
        return [(self.keys.partition(p), share.settlement()) for p, share in sorted(shares.items())]

    def _settle_without_memory(self, settlement: Settlement) -> None:
        """Only commands Redis never refuses for memory (DEL, HDEL, XACK), in one atomic step (per partition in the
        tagged layout, after the cache's DELs). A script, not a MULTI: a full Redis refuses to queue any command at
        all in a MULTI. Acknowledging again what an earlier partition's MULTI settled changes nothing."""
        if self.keys.tagged:
            self._drop_caches(settlement)
            shares = self._by_partition(settlement)
            cache_keys: list[str] = []
        else:
            shares = [(self.keys.partition(0), settlement)]
            cache_keys = [
                key for community_id in settlement.changed_communities for key in self.keys.entitlements(community_id)
            ]
        for part, share in shares:
            self._without_memory(
                keys=[part.stream, part.failures, *cache_keys],
                args=[self.group, len(share.cleared_failures), *share.cleared_failures, *share.ack_ids],
            )


@dataclasses.dataclass
class _Share:
    """One partition's part of a settlement, being collected."""

    ack_ids: list[str] = dataclasses.field(default_factory=list)
    marks: list[str] = dataclasses.field(default_factory=list)
    failures: dict[str, Failure] = dataclasses.field(default_factory=dict)
    dead: list[DeadLetter] = dataclasses.field(default_factory=list)
    cleared: list[str] = dataclasses.field(default_factory=list)

    def settlement(self) -> Settlement:
        return Settlement(
            ack_ids=tuple(self.ack_ids),
            processed_event_ids=tuple(self.marks),
            failures=self.failures,
            dead=tuple(self.dead),
            cleared_failures=tuple(self.cleared),
        )


# KEYS: stream, failures hash, then the cache keys to delete. ARGV: group, how many failure entries to clear,
# those entry ids, then the entry ids to acknowledge. In chunks: Lua's unpack() has a limit.
_SETTLE_WITHOUT_MEMORY = """
local function in_chunks(command, key, group, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    if group then
      redis.call(command, key, group, unpack(ARGV, i, j))
    else
      redis.call(command, key, unpack(ARGV, i, j))
    end
    i = j + 1
  end
end
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
end
local cleared = tonumber(ARGV[2])
in_chunks('HDEL', KEYS[2], nil, 3, 2 + cleared)
in_chunks('XACK', KEYS[1], ARGV[1], 3 + cleared, #ARGV)
return 1
"""
