"""Settling a committed batch in Redis (EventStream.settle): dedupe marks, cache invalidations, dead letters,
failure counts and acknowledgements in one atomic step; and, when Redis is full, what can be settled without
memory."""

from __future__ import annotations

import logging

import redis

from billing.keys import Keys
from billing.redis_io import invalidate_entitlements, is_memory_refusal
from consumer.dead_letters import DeadLetters
from consumer.entries import Settlement

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
        pipe = self.client.pipeline(transaction=True)
        for event_id in settlement.processed_event_ids:
            pipe.set(self.keys.seen(event_id), "processed", ex=self.dedupe_ttl_seconds)
        for community_id in settlement.changed_communities:
            invalidate_entitlements(pipe, self.keys, community_id)
        for dead in settlement.dead:
            self.dead_letters.add(pipe, dead)
        if settlement.failures:
            pipe.hset(
                self.keys.failures,
                mapping={k: f"{v.count}:{v.first_failed_ms}" for k, v in settlement.failures.items()},
            )
        cleared = settlement.cleared_failures + tuple(d.entry.entry_id for d in settlement.dead)
        if cleared:
            pipe.hdel(self.keys.failures, *cleared)
        ack_ids = settlement.ack_ids + tuple(d.entry.entry_id for d in settlement.dead)
        if ack_ids:
            pipe.xack(self.keys.stream, self.group, *ack_ids)
        pipe.execute()

    def _settle_without_memory(self, settlement: Settlement) -> None:
        """Only commands Redis never refuses for memory (DEL, HDEL, XACK), in one atomic step. A script, not a
        MULTI: a full Redis refuses to queue any command at all in a MULTI."""
        cache_keys = [
            key for community_id in settlement.changed_communities for key in self.keys.entitlements(community_id)
        ]
        self._without_memory(
            keys=[self.keys.stream, self.keys.failures, *cache_keys],
            args=[self.group, len(settlement.cleared_failures), *settlement.cleared_failures, *settlement.ack_ids],
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
