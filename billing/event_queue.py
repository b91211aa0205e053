"""Dedupe and enqueue in one atomic Redis step: the one way an event enters the stream, whether the receiver
took it from Stripe's POST or the consumer's backfill and reconciliation listed it from Stripe's Events API."""

from __future__ import annotations

import time
from typing import Any

import redis
from redis.cluster import RedisCluster

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


class ReplicaWaitError(redis.RedisError):
    """The event is stored on the primary (entry and dedupe mark, by one script), but fewer replicas than
    REDIS_MIN_REPLICAS confirmed it within REDIS_WAIT_MS: a failover now could lose it, so it is not confirmed.
    A retry finds it a duplicate if it survived, or queues it again if it did not."""


class EventQueue:
    """`min_replicas` (REDIS_MIN_REPLICAS) > 0: each round trip ends with `WAIT min_replicas wait_ms` on the
    connection that ran its scripts, and an event it queued is answered ReplicaWaitError unless that many replicas
    confirmed it. On a Redis Cluster, each node's events are one round trip on that node's own connection."""

    def __init__(
        self, client: redis.Redis, keys: Keys, dedupe_ttl_seconds: int, min_replicas: int = 0, wait_ms: int = 500
    ):
        self.client = client
        self.keys = keys
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        self.min_replicas = min_replicas
        self.wait_ms = wait_ms
        self._script = client.register_script(_ENQUEUE)
        self._partitions = keys.all_partitions  # built once: _keys runs for every event

    def enqueue(self, event_id: str, event_type: str, created: int, payload: bytes) -> str | None:
        """The new entry's id, or None when the event was already queued or processed.
        Raises redis.RedisError when Redis cannot confirm the entry is stored."""
        (reply,) = self.enqueue_many([(event_id, event_type, created, payload)])
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

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
        if self.min_replicas and isinstance(self.client, RedisCluster):
            return self._run_by_node(self.client, events)
        return self._run_on(self.client, events)

    def _run_on(self, client: redis.Redis, events: list[Event]) -> list[Any]:
        """One pipeline on `client`: the scripts, then WAIT when replicas must confirm them."""
        pipe = client.pipeline(transaction=False)
        for event_id, event_type, created, payload in events:
            pipe.execute_command(
                "EVALSHA",
                self._script.sha,
                2,
                *self._keys(event_id),
                *self._args(event_id, event_type, created, payload),
            )
        if not self.min_replicas:
            return pipe.execute(raise_on_error=False)
        pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
        *replies, confirmed = pipe.execute(raise_on_error=False)
        if isinstance(confirmed, int) and confirmed >= self.min_replicas:
            return replies
        error = ReplicaWaitError(
            f"stored on the primary, but {confirmed if isinstance(confirmed, int) else 'no'} of the "
            f"{self.min_replicas} replica(s) REDIS_MIN_REPLICAS asks for confirmed it within {self.wait_ms} ms"
            + (f" ({confirmed})" if isinstance(confirmed, Exception) else "")
        )
        # Only what this round trip queued is in doubt: a duplicate's entry was confirmed (or not) before.
        return [error if isinstance(reply, (bytes, str)) else reply for reply in replies]

    def _run_by_node(self, cluster: RedisCluster, events: list[Event]) -> list[Any]:
        """WAIT counts the replicas of the node it is sent to, for the writes of its own connection: so each
        node's events go, in their order, down that node's own connection (one round trip per node), not through
        RedisCluster's pipeline. A node that is gone or no longer serves the slot (MOVED) fails its own events,
        and the cluster's slots are read again for the next round trip."""
        replies: list[Any] = [None] * len(events)
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for number, event in enumerate(events):
            try:
                node = cluster.get_node_from_key(self.keys.seen(event[0]))
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                replies[number] = redis.ConnectionError(f"Redis Cluster: {exc}")
                continue
            by_node.setdefault(node.name, (node, []))[1].append(number)
        stale = any(reply is not None for reply in replies)
        for node, numbers in by_node.values():
            try:
                got = self._run_on(cluster.get_redis_connection(node), [events[n] for n in numbers])
            except redis.RedisError as exc:  # the node is gone or hangs: its events are not stored
                got, stale = [exc] * len(numbers), True
            for number, reply in zip(numbers, got):
                replies[number] = reply
                stale = stale or isinstance(reply, (redis.exceptions.MovedError, redis.exceptions.AskError))
        if stale:
            try:
                cluster.nodes_manager.initialize()
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                pass  # no node answers: the next round trip tries again
        return replies

    def _keys(self, event_id: str) -> tuple[str, str]:
        """The event's partition (by its id): its dedupe mark and that partition's stream, in one slot."""
        partition = self._partitions[self.keys.partition_of(event_id)]
        return partition.seen(event_id), partition.stream

    def _args(
        self, event_id: str, event_type: str, created: int, payload: bytes
    ) -> tuple[int, str, str, int, bytes, int]:
        return self.dedupe_ttl_seconds, event_id, event_type, created, payload, int(time.time() * 1000)


Event = tuple[str, str, int, bytes]  # event_id, event_type, created, payload


def _entry_id(reply: bytes | str | None) -> str | None:
    return reply.decode() if isinstance(reply, bytes) else reply
