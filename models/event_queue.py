"""Dedupe and enqueue in one atomic Redis step: the one way an event enters the stream, whether the receiver
took it from Stripe's POST or the consumer's backfill and reconciliation listed it from Stripe's Events API."""
from __future__ import annotations

import time

import redis

from models.redis_io import seen_key

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
    def __init__(self, client: redis.Redis, stream_key: str, dedupe_ttl_seconds: int):
        self.client = client
        self.stream_key = stream_key
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self._script = client.register_script(_ENQUEUE)

    def enqueue(self, event_id: str, event_type: str, created: int, payload: bytes) -> str | None:
        """The new entry's id, or None when the event was already queued or processed.
        Raises redis.RedisError when Redis cannot confirm the entry is stored."""
        entry_id = self._script(
            keys=[seen_key(self.stream_key, event_id), self.stream_key],
            args=[self.dedupe_ttl_seconds, event_id, event_type, created, payload, int(time.time() * 1000)],
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
