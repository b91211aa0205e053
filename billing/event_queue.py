"""Dedupe and enqueue in one atomic Redis step: the one way an event enters the stream, whether the receiver
took it from Stripe's POST or the consumer's backfill and reconciliation listed it from Stripe's Events API."""

from __future__ import annotations

import time
from typing import Any

import redis

from billing.keys import Keys

# KEYS: seen key, stream. ARGV: ttl, event_id, event_type, created, payload, received_at (ms).
# A script is atomic, but Redis does not undo a script's earlier writes when a later one fails,
# so the order matters: check, XADD, and only then remember the id.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[2], '*',
  'event_id', ARGV[2], 'event_type', ARGV[3], 'created', ARGV[4],
  'payload', ARGV[5], 'received_at', ARGV[6])
redis.call('SET', KEYS[1], 'queued', 'EX', ARGV[1])
return id
"""


class EventQueue:
    def __init__(self, client: redis.Redis, keys: Keys, dedupe_ttl_seconds: int):
        self.client = client
        self.keys = keys
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self._script = client.register_script(_ENQUEUE)

    def enqueue(self, event_id: str, event_type: str, created: int, payload: bytes) -> str | None:
        """The new entry's id, or None when the event was already queued or processed.
        Raises redis.RedisError when Redis cannot confirm the entry is stored."""
        entry_id = self._script(keys=self._keys(event_id), args=self._args(event_id, event_type, created, payload))
        return _entry_id(entry_id)

    def enqueue_many(self, events: list[Event]) -> list[str | None | redis.RedisError]:
        """`enqueue` for several events in one round trip (a pipeline, run in order, so a second copy of an
        event in the same call is a duplicate), each event's answer in its place: its entry id, None for a
        duplicate, or the error Redis answered for it. Raises redis.RedisError when Redis answered none."""
        replies = self._run(events)
        again = [n for n, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        if again:  # a restarted or flushed Redis: those EVALSHAs stored nothing, so load the script and redo them
            self.client.script_load(_ENQUEUE)
            for n, reply in zip(again, self._run([events[n] for n in again])):
                replies[n] = reply
        return [reply if isinstance(reply, redis.RedisError) else _entry_id(reply) for reply in replies]

    def _run(self, events: list[Event]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for event_id, event_type, created, payload in events:
            pipe.execute_command(
                "EVALSHA",
                self._script.sha,
                2,
                *self._keys(event_id),
                *self._args(event_id, event_type, created, payload),
            )
        return pipe.execute(raise_on_error=False)

    def _keys(self, event_id: str) -> tuple[str, str]:
        """The event's partition (by its id): its dedupe mark and that partition's stream, in one slot."""
        partition = self.keys.partition(self.keys.partition_of(event_id))
        return partition.seen(event_id), partition.stream

    def _args(
        self, event_id: str, event_type: str, created: int, payload: bytes
    ) -> tuple[int, str, str, int, bytes, int]:
        return self.dedupe_ttl_seconds, event_id, event_type, created, payload, int(time.time() * 1000)


Event = tuple[str, str, int, bytes]  # event_id, event_type, created, payload


def _entry_id(reply: bytes | str | None) -> str | None:
    return reply.decode() if isinstance(reply, bytes) else reply
