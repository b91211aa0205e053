"""The Redis cache of entitlement answers.

A reader that misses gets a guard token (the community's token key, set if absent) in the same round trip,
reads the database, and stores its answer only if the token is still there. Every invalidation deletes the
token, so an answer read from the database before a change can never be cached after it. The consumer
invalidates with DEL alone, which works on any key and which Redis never refuses, not even when full.

Any Redis error makes the cache step aside (the API answers from the database): an unreachable Redis for a
second, so requests do not queue behind its timeouts; an error reply (WRONGTYPE, a full or read-only Redis)
for this request only. A cached value that is not a JSON object is a miss, and is replaced."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import redis

from billing.keys import Keys
from billing.redis_io import ENTITLEMENT_TOKEN_TTL_SECONDS

# KEYS: answer, token. ARGV: a fresh token, its ttl (seconds), "1" to look past the cached answer.
# Returns {"answer", json} on a hit, else {"token", token}, or {"none", why} when no token can be set (Redis is
# full or a replica, or the token key holds something else): then the reader must not store its answer.
# pcall, so that none of this is ever an error reply.
_GET_OR_GUARD = """
if ARGV[3] ~= '1' then
  local cached = redis.pcall('GET', KEYS[1])
  if type(cached) == 'string' then
    return {'answer', cached}
  end
end
local token = redis.pcall('GET', KEYS[2])
if type(token) == 'string' then
  return {'token', token}
elseif type(token) == 'table' then
  return {'none', tostring(token.err)}
end
local set = redis.pcall('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
if type(set) == 'table' and set.err then
  return {'none', tostring(set.err)}
end
return {'token', ARGV[1]}
"""
# KEYS: answer, token. ARGV: the reader's token, answer, ttl seconds. 1 if stored.
_PUT_IF_GUARDED = """
if redis.pcall('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local set = redis.pcall('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if type(set) == 'table' and set.err then
  return 0
end
return 1
"""
STEP_ASIDE_SECONDS = 1.0


class EntitlementCache:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.keys = keys
        self._get = client.register_script(_GET_OR_GUARD)
        self._put = client.register_script(_PUT_IF_GUARDED)
        self._down_until = 0.0

    def get(self, community_id: str) -> tuple[dict[str, Any] | None, str | None]:
        """(cached answer, None) on a hit; on a miss (None, the token to pass to put), or (None, None) when
        Redis cannot guard an answer (unavailable, full, read-only)."""
        if time.monotonic() < self._down_until:
            return None, None
        keys = self.keys.entitlements(community_id)
        token = secrets.token_hex(16)
        try:
            kind, value = self._get(keys=keys, args=[token, ENTITLEMENT_TOKEN_TTL_SECONDS, "0"])
            if kind == b"answer":
                answer = _json_object(value)
                if answer is not None:
                    return answer, None
                # Not an answer (written by something else): a miss, and put() replaces it.
                kind, value = self._get(keys=keys, args=[token, ENTITLEMENT_TOKEN_TTL_SECONDS, "1"])
        except redis.RedisError as exc:
            self._step_aside(exc)
            return None, None
        return None, (value.decode() if kind == b"token" else None)

    def put(self, community_id: str, answer: dict[str, Any], token: str | None, ttl_seconds: int) -> None:
        if token is None or ttl_seconds <= 0:
            return
        try:
            self._put(keys=self.keys.entitlements(community_id), args=[token, json.dumps(answer), ttl_seconds])
        except redis.RedisError as exc:
            self._step_aside(exc)

    def _step_aside(self, exc: redis.RedisError) -> None:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):  # unreachable: not for every request
            self._down_until = time.monotonic() + STEP_ASIDE_SECONDS


def _json_object(value: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(value)
    except ValueError:  # not JSON, or not UTF-8
        return None
    return answer if isinstance(answer, dict) else None
