"""Redis connections, dropping cached entitlements, and how to read Redis' error replies (the key names are
billing.keys')."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from billing.config import RedisTopology, parse_redis_url
from billing.keys import Keys

# Fields of a stream entry (and, with the dead-letter fields, of a dead letter): see CONTRACT.md.
ENTRY_FIELDS = ("event_id", "event_type", "created", "payload", "received_at")


def connect_redis(url: str, *, timeout: float | None = 1.0) -> redis.Redis:
    """A client that fails fast: one attempt, short timeouts, so callers decide what an outage means.

    REDIS_URL's forms (billing.config.REDIS_URL_FORMS): one Redis (redis://, rediss://, unix://); a Redis Cluster
    (redis+cluster://), a `RedisCluster` that routes each command to the node of its key's slot; or Sentinel
    (redis+sentinel://), a client of the primary the Sentinels name, which asks them again after a failover.
    A RedisCluster is no redis.Redis, but answers the commands we send the same way: it is typed as one so that
    callers need not care (EventQueue, which must, asks with isinstance)."""
    options: dict[str, Any] = dict(
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=30,
    )
    address = parse_redis_url(url)
    if address.topology is RedisTopology.SINGLE:
        return redis.Redis.from_url(url, **options)
    credentials: dict[str, Any] = dict(username=address.username, password=address.password)
    if address.tls:
        credentials["ssl"] = True
    if address.topology is RedisTopology.CLUSTER:
        # One attempt here too: a refused or timed-out node makes the client read the slots again (for the next
        # call) and raise, instead of retrying inside the request.
        with _cluster_errors():
            cluster = _Cluster(
                startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
                **credentials,
                **{name: value for name, value in options.items() if name != "retry_on_timeout"},  # deprecated there
            )
        return cast(redis.Redis, cluster)
    sentinels = Sentinel(
        list(address.nodes),
        sentinel_kwargs=dict(
            password=address.sentinel_password,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            **({"ssl": True} if address.tls else {}),
        ),
        **credentials,
    )
    return cast(redis.Redis, sentinels.master_for(address.service, db=address.db, **options))


@contextlib.contextmanager
def _cluster_errors() -> Iterator[None]:
    """redis-py's cluster errors that are no RedisError (no node reachable, a slot no node serves) as the
    ConnectionError every caller already treats as an outage."""
    try:
        yield
    except redis.exceptions.RedisClusterException as exc:
        raise redis.ConnectionError(f"Redis Cluster: {exc}") from exc


class _Cluster(RedisCluster):
    """A RedisCluster whose every failure is a redis.RedisError, like a redis.Redis's."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _cluster_errors():
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        execute = pipe.execute

        def translated(raise_on_error: bool = True) -> Any:
            with _cluster_errors():
                return execute(raise_on_error)

        pipe.execute = translated
        return pipe


# How long a reader's guard token (Keys.entitlement_token) lives: far longer than a database read takes. A reader
# slower than this just does not cache its answer.
ENTITLEMENT_TOKEN_TTL_SECONDS = 60


def invalidate_entitlements(pipe: redis.client.Pipeline, keys: Keys, community_id: str) -> None:
    """Drop a community's cached answer and its guard token. DEL only: it works whatever the keys hold and
    Redis never refuses it, not even at maxmemory, so an invalidation cannot fail on a reply. A DEL each: a
    cluster's pipeline takes no DEL of several keys."""
    for key in keys.entitlements(community_id):
        pipe.delete(key)


# Error replies that say "not now" (a full Redis, a failover, a restart, a persistence problem), not "never":
# retried with backoff.
TRANSIENT_REPLIES = frozenset(
    {"OOM", "READONLY", "UNBLOCKED", "LOADING", "MASTERDOWN", "MISCONF", "NOREPLICAS", "TRYAGAIN"}
)
# Refusals because Redis is at maxmemory: a MULTI with a refused command is aborted as a whole (EXECABORT).
MEMORY_REPLIES = frozenset({"OOM", "EXECABORT"})
_CODES_BY_CLASS = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.MasterDownError, "MASTERDOWN"),
    (redis.exceptions.TryAgainError, "TRYAGAIN"),
    (redis.exceptions.ExecAbortError, "EXECABORT"),
    (redis.exceptions.NoScriptError, "NOSCRIPT"),
)


def reply_code(exc: BaseException) -> str | None:
    """The code of a Redis error reply (OOM, READONLY, NOGROUP, WRONGTYPE, ERR, ...), or None for an error
    that is not a reply (a refused or broken connection, a timeout)."""
    if not isinstance(exc, redis.RedisError):
        return None
    code = getattr(exc, "status_code", None)  # redis-py strips the code of the replies it has a class for
    if code:
        return str(code)
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
