"""Redis connections, the key names both sides agree on, and how to read Redis' error replies."""
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


def backfill_cursor_key(stream_key: str) -> str:
    """Where `python -m consumer backfill` keeps how far it got (JSON: its window, types and the (created, id) of
    the last event it handled), so an interrupted run resumes after it."""
    return f"{stream_key}:backfill:cursor"


def reconcile_lock_key(stream_key: str) -> str:
    """Held by the consumer that reconciles from Stripe's Events API this interval (one at a time)."""
    return f"{stream_key}:reconcile:lock"


# The entitlement cache's keys. Each kind of key has its own prefix, and the kind comes before the id, so no
# community id (whatever it contains) can make one kind's key equal another kind's, or another community's. Nor
# one of the keys of the cache before these (`billing:entitlements:<id>`, `billing:entitlements:gen:<id>`), which
# may still be there, for a while, after an upgrade.
ENTITLEMENT_ANSWER_PREFIX = "billing:entitlement-cache:answer:"
ENTITLEMENT_TOKEN_PREFIX = "billing:entitlement-cache:token:"
# How long a reader's guard token lives: far longer than a database read takes. A reader slower than this
# just does not cache its answer.
ENTITLEMENT_TOKEN_TTL_SECONDS = 60


def entitlement_key(community_id: str) -> str:
    """The cached entitlements answer of one community (JSON); deleted after every committed change to it."""
    return f"{ENTITLEMENT_ANSWER_PREFIX}{community_id}"


def entitlement_token_key(community_id: str) -> str:
    """The guard of one community's cache entry: a random token a reader sets (if absent) when it misses and
    must still find there to store the answer it read from the database. Every invalidation deletes it, so a
    reader that read the database before a change can never cache its older answer after it."""
    return f"{ENTITLEMENT_TOKEN_PREFIX}{community_id}"


def invalidate_entitlements(pipe: redis.client.Pipeline, community_id: str) -> None:
    """Drop a community's cached answer and its guard token. DEL only: it works whatever the keys hold and
    Redis never refuses it, not even at maxmemory, so an invalidation cannot fail on a reply."""
    pipe.delete(entitlement_key(community_id), entitlement_token_key(community_id))


# Error replies that say "not now" (a full Redis, a failover, a restart, a persistence problem), not "never":
# retried with backoff.
TRANSIENT_REPLIES = frozenset({"OOM", "READONLY", "UNBLOCKED", "LOADING", "MASTERDOWN", "MISCONF", "NOREPLICAS",
                               "TRYAGAIN"})
# Refusals because Redis is at maxmemory: a MULTI with a refused command is aborted as a whole (EXECABORT).
MEMORY_REPLIES = frozenset({"OOM", "EXECABORT"})
_CODES_BY_CLASS = (
    (redis.exceptions.OutOfMemoryError, "OOM"), (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"), (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"), (redis.exceptions.ExecAbortError, "EXECABORT"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
)


def reply_code(exc: BaseException) -> str | None:
    """The code of a Redis error reply (OOM, READONLY, NOGROUP, WRONGTYPE, ERR, ...), or None for an error
    that is not a reply (a refused or broken connection, a timeout)."""
    if not isinstance(exc, redis.RedisError):
        return None
    code = getattr(exc, "status_code", None)  # redis-py strips the code of the replies it has a class for
    if code:
        return code
    for cls, class_code in _CODES_BY_CLASS:
        if isinstance(exc, cls):
            return class_code
    if not isinstance(exc, redis.ResponseError):
        return None
    text = str(exc)
    _, annotated, rest = text.partition("of pipeline caused error: ")  # a pipeline prefixes its command
    word = (rest if annotated else text).split(" ", 1)[0]
    return word if word.isalpha() and word.isupper() else "ERR"


def is_transient(exc: BaseException) -> bool:
    return reply_code(exc) in TRANSIENT_REPLIES


def is_memory_refusal(exc: BaseException) -> bool:
    return reply_code(exc) in MEMORY_REPLIES
