"""REDIS_URL's Cluster and Sentinel forms against real servers: connect_redis gives a client that enqueues
(EventQueue) and reads back, follows a failover, and with REDIS_MIN_REPLICAS waits for each node's replica.
The stream key carries a hash tag ({billing}) so that an event's dedupe key and the stream share a slot."""

from __future__ import annotations

import pytest

from billing.event_queue import EventQueue, ReplicaWaitError
from billing.keys import Keys
from billing.redis_io import connect_redis
from harness import RedisCluster, RedisSentinel, wait_for

KEYS = Keys(prefix="{billing}", stream="{billing}:events", dead_letters="{billing}:events:dead")


def events(*ids: str) -> list[tuple[str, str, int, bytes]]:
    return [(event_id, "invoice.paid", 1_700_000_000, b'{"id": "%s"}' % event_id.encode()) for event_id in ids]


def stream_ids(client) -> list[str]:
    return [fields[b"event_id"].decode() for _, fields in client.xrange(KEYS.stream)]


@pytest.fixture(scope="module")
def cluster():
    servers = RedisCluster().start()
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def sentinel():
    servers = RedisSentinel().start()
    yield servers
    servers.close()


def test_a_cluster_url_enqueues_reads_and_follows_a_manual_failover(cluster):
    client = connect_redis(cluster.url, timeout=2)
    queue = EventQueue(client, KEYS, 3600)
    assert queue.enqueue_many(events("evt_c1", "evt_c2", "evt_c1"))[2] is None  # the second evt_c1: a duplicate
    assert stream_ids(client) == ["evt_c1", "evt_c2"]

    primary = cluster.primary_of_key(KEYS.stream)
    replica = cluster.replica_of(primary)
    cluster.failover(replica)
    assert cluster.primary_of_key(KEYS.stream) is replica
    # an attempt cut off by the failover may have stored it: then the next finds it a duplicate
    wait_for(
        lambda: queue.enqueue("evt_c3", "invoice.paid", 1, b"{}") or "evt_c3" in stream_ids(client),
        what="an enqueue on the new primary",
    )
    assert stream_ids(client) == ["evt_c1", "evt_c2", "evt_c3"]
    assert queue.enqueue("evt_c2", "invoice.paid", 1, b"{}") is None


def test_a_cluster_with_min_replicas_waits_on_the_node_that_took_the_writes(cluster):
    client = connect_redis(cluster.url, timeout=2)
    queue = EventQueue(client, KEYS, 3600, min_replicas=1, wait_ms=300)
    tag = next(
        f"{{n{n}}}"
        for n in range(100)
        if cluster.primary_of_key(f"{{n{n}}}") is not cluster.primary_of_key(KEYS.stream)
    )
    other = Keys(prefix=tag, stream=f"{tag}:events", dead_letters=f"{tag}:events:dead")  # on another node
    replies = queue.enqueue_many(events("evt_w1", "evt_w2"))
    assert all(isinstance(reply, str) for reply in replies), replies

    replica = cluster.replica_of(cluster.primary_of_key(KEYS.stream))
    replica.pause()
    try:
        replies = queue.enqueue_many(events("evt_w3", "evt_w1"))
        assert isinstance(replies[0], ReplicaWaitError) and replies[1] is None, replies
        # another node's replica runs: its events are confirmed in the same call
        other_queue = EventQueue(client, other, 3600, min_replicas=1, wait_ms=300)
        assert isinstance(other_queue.enqueue("evt_o1", "invoice.paid", 1, b"{}"), str)
    finally:
        replica.resume()
    assert queue.enqueue("evt_w3", "invoice.paid", 1, b"{}") is None  # stored on the primary all along


def test_a_sentinel_url_enqueues_reads_and_follows_the_promoted_replica(sentinel):
    client = connect_redis(sentinel.url, timeout=2)
    queue = EventQueue(client, KEYS, 3600, min_replicas=1, wait_ms=500)
    assert isinstance(queue.enqueue("evt_s1", "invoice.paid", 1, b"{}"), str)  # confirmed by the replica
    assert stream_ids(client) == ["evt_s1"]

    sentinel.kill_primary()
    queue.min_replicas = 0  # the old primary is gone: no replica left to confirm
    wait_for(
        lambda: queue.enqueue("evt_s2", "invoice.paid", 1, b"{}") or "evt_s2" in stream_ids(client),
        what="an enqueue on the promoted replica",
    )
    assert stream_ids(client) == ["evt_s1", "evt_s2"]  # the replica had evt_s1: WAIT said so before the 200
    assert client.connection_pool.get_master_address()[1] == sentinel.primary.port
