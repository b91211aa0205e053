"""The key layouts: untagged (the default: every name as earlier releases had it) and hash-tagged (a Redis Cluster,
or STREAM_PARTITIONS above 1: every key of one partition in one slot), and the routing of an event to a partition."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from billing.config import ConfigError, Settings
from billing.keys import partition_of


def test_one_partition_on_a_plain_redis_keeps_every_name():
    keys = Settings.from_env({}).keys
    assert not keys.tagged and keys.partitions == 1
    part = keys.partition(0)
    assert (part.stream, part.dead_letters, part.failures) == (
        "stripe:events",
        "stripe:events:dead",
        "stripe:events:failures",
    )
    assert part.seen("evt_1") == keys.seen("evt_1") == "stripe:events:seen:evt_1"
    assert keys.entitlements("42") == ("billing:entitlement-cache:answer:42", "billing:entitlement-cache:token:42")
    assert keys.all_partitions == (part,)


def test_several_partitions_tag_each_partitions_family():
    keys = Settings.from_env({"STREAM_PARTITIONS": "4"}).keys
    assert keys.tagged and len(keys.all_partitions) == 4
    part = keys.partition(2)
    assert part.stream == "{stripe:events:2}"
    assert part.seen("evt_1") == "{stripe:events:2}:seen:evt_1"
    assert part.failures == "{stripe:events:2}:failures"
    assert part.dead_letters == "{stripe:events:2}:dead"
    assert keys.entitlements("42") == ("billing:entitlement-cache:{42}:answer", "billing:entitlement-cache:{42}:token")
    assert keys.backfill_cursor == "{stripe:events}:backfill:cursor"
    assert keys.sweep_lock == "billing:sweep:lock"
    with pytest.raises(ValueError):
        keys.partition(4)


def test_a_cluster_url_tags_the_one_partition_with_the_stream_key():
    keys = Settings(redis_url="redis+cluster://localhost:7000/0").keys
    assert keys.tagged
    part = keys.partition(0)
    assert (part.stream, part.failures, part.dead_letters) == (
        "{stripe:events}",
        "{stripe:events}:failures",
        "{stripe:events}:dead",
    )
    assert Settings(redis_url="rediss+cluster://localhost:7000/0").redis_cluster


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_every_key_of_a_partition_is_in_one_slot(partitions):
    keys = Settings(stream_partitions=partitions, redis_url="redis+cluster://h:1/0").keys
    slots = set()
    for part in keys.all_partitions:
        family = {key_slot(k.encode()) for k in (part.stream, part.failures, part.dead_letters, part.seen("evt_x{y}"))}
        assert len(family) == 1
        slots |= family
    assert len(slots) == partitions  # the partitions do spread over slots (these stream names happen to)
    for community in ("42", "c{1}", "a}b", "{x}"):  # an empty id (no API path has one) would hash whole
        answer, token = keys.entitlements(community)
        assert answer != token and key_slot(answer.encode()) == key_slot(token.encode())


def test_an_events_dedupe_mark_is_in_the_partition_it_is_routed_to():
    keys = Settings(stream_partitions=4).keys
    for n in range(50):
        event_id = f"evt_{n}"
        part = keys.partition(keys.partition_of(event_id))
        assert keys.seen(event_id) == part.seen(event_id)
        assert key_slot(keys.seen(event_id).encode()) == key_slot(part.stream.encode())


def test_routing_is_pinned():
    """CRC-32 of the id: the same in every process and release (changing it would queue an event's redelivery on
    another partition than its dedupe mark)."""
    assert [partition_of(f"evt_{n}", 4) for n in range(8)] == [3, 1, 3, 1, 2, 0, 2, 0]
    assert [partition_of("evt_1NLJ", n) for n in (2, 3, 16)] == [1, 0, 3]
    assert partition_of("evt_1", 1) == 0


def test_partition_settings_are_checked():
    assert Settings.from_env({"STREAM_PARTITIONS": "4", "CONSUMER_PARTITIONS": "2, 0"}).read_partitions == (0, 2)
    assert Settings.from_env({"STREAM_PARTITIONS": "3"}).read_partitions == (0, 1, 2)
    with pytest.raises(ConfigError, match="CONSUMER_PARTITIONS"):
        Settings.from_env({"STREAM_PARTITIONS": "2", "CONSUMER_PARTITIONS": "2"})
    with pytest.raises(ConfigError, match="CONSUMER_PARTITIONS"):
        Settings.from_env({"CONSUMER_PARTITIONS": "a"})
    with pytest.raises(ConfigError, match="STREAM_PARTITIONS"):
        Settings.from_env({"STREAM_PARTITIONS": "0"})
