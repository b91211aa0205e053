"""The receiver's group commit (receiver/group_commit.py): concurrent enqueues share round trips, and each
request still gets its own answer, on a real redis-server."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from billing.config import Settings
from billing.event_queue import EventQueue
from harness import wait_for
from receiver.group_commit import GroupCommit

STREAM = "billing:events"
KEYS = Settings(stream_key=STREAM).keys


class HeldQueue(EventQueue):
    """Holds its first round trip until `release` is set, and records the size of every batch."""

    def __init__(self, *args):
        super().__init__(*args)
        self.release = threading.Event()
        self.batches: list[int] = []

    def enqueue_many(self, events):
        self.batches.append(len(events))
        if len(self.batches) == 1:
            self.release.wait(10)
        return super().enqueue_many(events)


def test_requests_waiting_behind_a_round_trip_share_the_next_one_and_each_gets_its_answer(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = HeldQueue(client, KEYS, 3600)
    group = GroupCommit(queue)
    ids = [f"evt_{n}" for n in range(20)] + ["evt_3", "evt_7"]  # two sent twice, in the same batch
    with ThreadPoolExecutor(len(ids) + 1) as pool:
        first = pool.submit(group.enqueue, "evt_first", "invoice.paid", 1, b"{}")
        wait_for(lambda: queue.batches == [1], what="the first round trip")
        rest = [pool.submit(group.enqueue, event_id, "invoice.paid", 1, b"{}") for event_id in ids]
        wait_for(lambda: len(group._waiting) == len(ids), what="every other request waiting")
        queue.release.set()
        answers = [future.result(10) for future in rest]
        assert first.result(10)
    assert queue.batches == [1, len(ids)]
    queued = {event_id for event_id, answer in zip(ids, answers) if answer is not None}
    assert queued == {f"evt_{n}" for n in range(20)}  # each id queued once: its second copy is a duplicate
    assert answers.count(None) == 2
    entries = client.xrange(STREAM)
    assert len(entries) == 21
    assert {fields[b"event_id"].decode(): entry.decode() for entry, fields in entries} == {
        event_id: answer for event_id, answer in [("evt_first", first.result())] + list(zip(ids, answers)) if answer
    }


def test_every_request_of_a_batch_gets_the_error_when_redis_is_down(own_redis):
    group = GroupCommit(EventQueue(redis.Redis.from_url(own_redis.url, socket_timeout=1), KEYS, 3600))
    assert group.enqueue("evt_before", "invoice.paid", 1, b"{}")
    own_redis.stop()
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(group.enqueue, f"evt_{n}", "invoice.paid", 1, b"{}") for n in range(8)]
        for future in futures:
            with pytest.raises(redis.RedisError):
                future.result(10)
    own_redis.start()
    assert group.enqueue("evt_after", "invoice.paid", 1, b"{}")  # no request is left leading or waiting


def test_a_flushed_script_cache_is_reloaded(redis_url):
    client = redis.Redis.from_url(redis_url)
    group = GroupCommit(EventQueue(client, KEYS, 3600))
    assert group.enqueue("evt_1", "invoice.paid", 1, b"{}")
    client.script_flush()
    assert group.enqueue("evt_2", "invoice.paid", 1, b"{}")
    assert group.enqueue("evt_2", "invoice.paid", 1, b"{}") is None
    assert client.xlen(STREAM) == 2


class Interrupted(BaseException):
    """Not an Exception: what a worker's shutdown raises in a thread."""


class InterruptedQueue(HeldQueue):
    def enqueue_many(self, events):
        self.batches.append(len(events))
        if len(self.batches) == 1:
            self.release.wait(10)
            raise Interrupted()
        return EventQueue.enqueue_many(self, events)


def test_a_leader_interrupted_mid_round_trip_leaves_nobody_waiting(redis_url):
    client = redis.Redis.from_url(redis_url)
    queue = InterruptedQueue(client, KEYS, 3600)
    group = GroupCommit(queue)
    with ThreadPoolExecutor(4) as pool:
        leader = pool.submit(group.enqueue, "evt_leader", "invoice.paid", 1, b"{}")
        wait_for(lambda: queue.batches == [1], what="the first round trip")
        followers = [pool.submit(group.enqueue, f"evt_{n}", "invoice.paid", 1, b"{}") for n in range(3)]
        wait_for(lambda: len(group._waiting) == 3, what="three requests waiting")
        queue.release.set()
        with pytest.raises(Interrupted):
            leader.result(10)
        assert [future.result(10) is not None for future in followers] == [True] * 3  # the next round trip
    assert group.enqueue("evt_after", "invoice.paid", 1, b"{}")
    assert client.xlen(STREAM) == 4
