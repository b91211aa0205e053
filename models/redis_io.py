"""Redis connections and the key names both sides agree on."""
from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Fields of a stream entry (and, with the dead-letter fields, of a dead letter): see CONTRACT.md.
ENTRY_FIELDS = ("event_id", "event_type", "created", "payload", "received_at")


def connect_redis(url: str, *, timeout: float | None = 1.0) -> redis.Redis:
    """A client that fails fast: one attempt, short timeouts, so callers decide what an outage means."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )


def seen_key(stream_key: str, event_id: str) -> str:
    """Set while an event is queued or processed (value "queued" or "processed"): the fast dedupe path."""
    return f"{stream_key}:seen:{event_id}"


def entitlement_key(community_id: str) -> str:
    """The cached entitlements of one community; deleted after every committed change to it."""
    return f"billing:entitlements:{community_id}"


def entitlement_generation_key(community_id: str) -> str:
    """Bumped with every invalidation, so a reader that read the database before a change cannot
    write its older answer into the cache after it."""
    return f"billing:entitlements:gen:{community_id}"


GENERATION_TTL_SECONDS = 86_400  # far longer than any read takes


def invalidate_entitlements(pipe: redis.client.Pipeline, community_id: str) -> None:
    pipe.delete(entitlement_key(community_id))
    pipe.incr(entitlement_generation_key(community_id))
    pipe.expire(entitlement_generation_key(community_id), GENERATION_TTL_SECONDS)
