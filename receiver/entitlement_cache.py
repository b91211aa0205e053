"""The Redis cache of entitlement answers. A write only lands if no invalidation happened since the
reader looked (a generation counter the consumer bumps), so an answer read from the database before a
change can never be cached after it. When Redis fails, the cache steps aside for a second and the
API answers from the database."""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from models.redis_io import entitlement_generation_key, entitlement_key

# KEYS: entry, generation. ARGV: generation seen before reading the database, answer, ttl seconds.
_PUT_IF_UNCHANGED = """
if (redis.call('GET', KEYS[2]) or '0') == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
STEP_ASIDE_SECONDS = 1.0


class EntitlementCache:
    def __init__(self, client: redis.Redis):
        self.client = client
        self._put = client.register_script(_PUT_IF_UNCHANGED)
        self._down_until = 0.0

    def get(self, community_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(cached answer or None, the generation to pass to put; None when Redis is unavailable)."""
        if time.monotonic() < self._down_until:
            return None, None
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(entitlement_key(community_id))
            pipe.get(entitlement_generation_key(community_id))
            cached, generation = pipe.execute()
        except redis.RedisError:
            self._down_until = time.monotonic() + STEP_ASIDE_SECONDS
            return None, None
        generation = generation.decode() if generation else "0"
        return (json.loads(cached) if cached else None), generation

    def put(self, community_id: str, answer: dict[str, Any], generation: str | None, ttl_seconds: int) -> None:
        if generation is None or ttl_seconds <= 0:
            return
        try:
            self._put(keys=[entitlement_key(community_id), entitlement_generation_key(community_id)],
                      args=[generation, json.dumps(answer), ttl_seconds])
        except redis.RedisError:
            self._down_until = time.monotonic() + STEP_ASIDE_SECONDS
