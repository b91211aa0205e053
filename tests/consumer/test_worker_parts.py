"""The worker's parts, in-process: its backoff, its clocks, the stream it is given, and its loop's decisions (when
to reclaim, retry, back off, grow the batch, stop) driven against a real redis-server and SQLite."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable

import pytest
import redis
from prometheus_client import REGISTRY

from billing.config import ConfigError, Settings
from billing.event_queue import EventQueue
from billing.redis_io import connect_redis
from consumer.entries import Entry, Settlement
from consumer.stream import EventStream
from consumer.worker import Backoff, Timing, Worker
from models.db import open_database
from models.tables import WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import broken_event


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    backoff = Backoff(first=0.1, cap=1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1


def test_the_deadline_defaults_to_half_the_claim_idle_time(settings):
    timing = Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=30_000))
    assert (timing.claim_idle_ms, timing.deadline_ms, timing.tick_ms) == (30_000, 15_000, 5_000)


@pytest.mark.parametrize("deadline_ms", [0, -5, 30_000, 40_000])
def test_a_deadline_not_below_the_claim_idle_time_is_refused(settings, deadline_ms):
    """A batch slower than CLAIM_IDLE_MS could be reclaimed by another consumer and applied twice."""
    with pytest.raises(ConfigError, match="must be shorter than CLAIM_IDLE_MS"):
        Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=30_000), deadline_ms)


@pytest.mark.parametrize("claim_idle_ms,tick_ms", [(100, 50), (1_000, 250), (60_000, 5_000)])
def test_the_tick_is_a_quarter_of_the_claim_idle_time_within_bounds(settings, claim_idle_ms, tick_ms):
    assert Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=claim_idle_ms)).tick_ms == tick_ms


def test_own_entries_are_retried_after_one_two_four_ticks_and_always_before_a_reclaim():
    timing = Timing(claim_idle_ms=10_000, deadline_ms=5_000, tick_ms=1_000)
    due_after = [
        min(idle for idle in range(0, 20_000, 100) if timing.retry_due(idle, deliveries))
        for deliveries in (1, 2, 3, 4, 10)
    ]
    assert due_after == [1_000, 2_000, 4_000, 5_000, 5_000]  # capped at half of CLAIM_IDLE_MS


def test_the_worker_reads_from_the_stream_it_is_given(settings, db, redis_url):
    client = connect_redis(redis_url)
    stream = EventStream(client, dataclasses.replace(settings, stream_key="other:events"), "w1")
    worker = Worker(settings, db, client, "w1", stream=stream)
    assert worker.stream is stream
    worker.stream.ensure_group()
    assert client.exists("other:events") and not client.exists(settings.keys.stream)


# --- the loop, in-process against a real redis-server and SQLite ----------------------------------------------------


class LoopStream(EventStream):
    """The stream a test gives the worker. It notes what the loop asks of it and, as SIGTERM would, stops the loop
    once `until()` holds (checked before each read of new entries; after 500 reads whatever happens)."""

    def __init__(self, client, settings: Settings, consumer: str):
        super().__init__(client, settings, consumer)
        self.worker: Worker | None = None
        self.until: Callable[[], bool] = lambda: True
        self.on_read: Callable[[], None] = lambda: None  # before each read of new entries (may raise)
        self.calls: list[str] = []  # the reads and claims asked for, in order
        self.reads: list[int] = []  # how many new entries each read asked for
        self.deliveries: list[tuple[float, str]] = []  # (time.monotonic() once delivered, entry id)
        self.batches: list[tuple[str, ...]] = []  # the entries each settlement acknowledged

    def _delivered(self, entries: list[Entry]) -> list[Entry]:
        now = time.monotonic()
        self.deliveries += [(now, entry.entry_id) for entry in entries]
        return entries

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        self.calls.append("read_own_pending")
        return self._delivered(super().read_own_pending(after, count))

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        if self.until() or len(self.reads) >= 500:
            self.worker.stopping.set()
            return []
        self.calls.append("read_new")
        self.reads.append(count)
        self.on_read()
        return self._delivered(super().read_new(count, block_ms))

    def reclaim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        self.calls.append("reclaim_idle")
        return self._delivered(super().reclaim_idle(min_idle_ms, count))

    def retry_own(self, due: Callable[[int, int], bool], count: int) -> list[Entry]:
        return self._delivered(super().retry_own(due, count))

    def settle(self, settlement: Settlement) -> bool:
        settled = super().settle(settlement)
        self.batches.append(settlement.ack_ids + tuple(dead.entry.entry_id for dead in settlement.dead))
        return settled


class NotedBackoff(Backoff):
    def __init__(self, first: float, cap: float):
        super().__init__(first, cap)
        self.delays: list[float] = []

    def next(self) -> float:
        self.delays.append(super().next())
        return self.delays[-1]


@pytest.fixture
def worker_loop(redis_url, sqlite_url):
    """make(**settings) -> (worker "w1", its LoopStream, the settings, a Redis client), on a migrated SQLite."""
    database = open_database(sqlite_url)
    clients = []

    def make(batch_size: int = 500, **overrides) -> tuple[Worker, LoopStream, Settings, redis.Redis]:
        settings = Settings(redis_url=redis_url, database_url=sqlite_url, **overrides)
        client = connect_redis(redis_url)
        clients.append(client)
        stream = LoopStream(client, settings, "w1")
        worker = Worker(settings, database, client, "w1", batch_size=batch_size, block_ms=20, stream=stream)
        stream.worker = worker
        return worker, stream, settings, client

    yield make
    for client in clients:
        client.close()
    database.close()


def enqueue(client: redis.Redis, settings: Settings, *events: dict) -> list[str]:
    queue = EventQueue(client, settings.keys, 3600)
    return [queue.enqueue(e["id"], e["type"], e["created"], json.dumps(e).encode()) for e in events]


def statuses(*events: dict) -> list[str | None]:
    rows = {row.stripe_event_id: row.status for row in WebhookEvent.select()}
    return [rows.get(event["id"]) for event in events]


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def checkouts(n: int, prefix: str) -> list[dict]:
    return [build_event("checkout.session.completed", f"{prefix}{i}", created=1_700_000_000 + i) for i in range(n)]


def test_the_loop_applies_batches_of_at_most_its_size_and_a_stop_ends_it_after_the_batch_in_hand(worker_loop):
    worker, stream, settings, client = worker_loop(batch_size=2)
    events = checkouts(5, "loop")
    ids = enqueue(client, settings, *events)
    stream.until = lambda: len(stream.batches) == 3
    worker.run()
    assert stream.batches == [tuple(ids[:2]), tuple(ids[2:4]), tuple(ids[4:])]
    assert statuses(*events) == ["processed"] * 5
    assert client.xpending(settings.keys.stream, settings.consumer_group)["pending"] == 0

    # A stop asked for while a batch is in hand: that batch is applied and acknowledged, and nothing more is read.
    more = checkouts(4, "later")
    later = enqueue(client, settings, *more)
    worker.stopping.clear()
    stream.until = lambda: False
    real_settle = stream.settle

    def settle_then_stop(settlement):
        worker.stopping.set()  # as the SIGTERM handler does
        return real_settle(settlement)

    stream.settle = settle_then_stop
    reads = len(stream.reads)
    worker.run()
    assert stream.batches[-1] == tuple(later[:2]) and len(stream.reads) == reads + 1
    assert statuses(*more) == ["processed", "processed", None, None]


def test_after_a_restart_its_own_pending_entries_come_before_anything_new(worker_loop):
    worker, stream, settings, client = worker_loop()
    stream.ensure_group()
    held = checkouts(3, "held")
    held_ids = enqueue(client, settings, *held)
    client.xreadgroup(settings.consumer_group, "w1", {settings.keys.stream: ">"})  # then w1 crashed
    fresh = checkouts(2, "fresh")
    fresh_ids = enqueue(client, settings, *fresh)
    stream.until = lambda: len(stream.batches) == 2
    worker.run()
    assert stream.calls[:2] == ["read_own_pending", "read_own_pending"]  # the second finds none left
    assert stream.batches == [tuple(held_ids), tuple(fresh_ids)]
    assert statuses(*held, *fresh) == ["processed"] * 5


def test_entries_a_dead_consumer_left_idle_past_claim_idle_ms_are_reclaimed_at_once(worker_loop):
    worker, stream, settings, client = worker_loop(claim_idle_ms=1_000)
    stream.ensure_group()
    events = checkouts(3, "orphan")
    ids = enqueue(client, settings, *events)
    client.xreadgroup(settings.consumer_group, "dead", {settings.keys.stream: ">"})
    client.xclaim(settings.keys.stream, settings.consumer_group, "dead", 0, ids, idle=1_000, justid=True)
    young = checkouts(1, "young")
    young_ids = enqueue(client, settings, *young)
    client.xreadgroup(settings.consumer_group, "alive", {settings.keys.stream: ">"})  # idle 0: not reclaimed
    before = counted("billing_reclaimed_total")
    stream.until = lambda: len(stream.batches) == 1
    worker.run()
    assert stream.calls == ["read_own_pending", "reclaim_idle"]  # on the first tick, before any read of new ones
    assert stream.batches == [tuple(ids)] and counted("billing_reclaimed_total") - before == 3
    assert statuses(*events, *young) == ["processed"] * 3 + [None]
    assert [
        row["message_id"].decode()
        for row in client.xpending_range(settings.keys.stream, settings.consumer_group, "-", "+", 10)
    ] == young_ids  # still alive's


def test_a_failing_entry_is_retried_with_backoff_then_becomes_a_dead_letter_and_the_rest_goes_on(worker_loop):
    worker, stream, settings, client = worker_loop(claim_idle_ms=1_000, max_deliveries=3)  # tick 250 ms
    poison, good = broken_event("poison"), checkouts(1, "good")[0]
    [poison_id, good_id] = enqueue(client, settings, poison, good)
    stream.until = lambda: client.xlen(settings.keys.dead_letters) == 1
    worker.run()
    assert statuses(poison, good) == ["dead", "processed"]
    assert stream.batches[0] == (good_id,)  # the good one was acknowledged with the first try
    tried_at = [at for at, entry_id in stream.deliveries if entry_id == poison_id]
    assert len(tried_at) == 3
    # The second try comes a tick after the first, the third two ticks after the second (see Timing.retry_due);
    # less a few ms: a delivery is noted once its read has returned.
    gaps = [later - earlier for earlier, later in zip(tried_at, tried_at[1:])]
    assert gaps[0] >= 0.24 and gaps[1] >= 0.49, gaps
    [(_, letter)] = client.xrange(settings.keys.dead_letters)
    assert (letter[b"source_id"].decode(), letter[b"deliveries"]) == (poison_id, b"3")
    assert client.xpending(settings.keys.stream, settings.consumer_group)["pending"] == 0


def test_redis_errors_are_counted_and_retried_with_growing_backoff_and_a_success_resets_it(worker_loop):
    worker, stream, settings, client = worker_loop()
    worker.backoff = NotedBackoff(first=0.01, cap=0.04)
    events = checkouts(2, "outage")
    enqueue(client, settings, *events)
    failures = iter(range(4))

    def unreachable_four_times() -> None:
        if next(failures, None) is not None:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    stream.on_read = unreachable_four_times
    stream.until = lambda: len(stream.batches) == 1
    before = counted("billing_redis_errors_total")
    worker.run()
    assert worker.backoff.delays == [0.01, 0.02, 0.04, 0.04]
    assert counted("billing_redis_errors_total") - before == 4
    assert worker.backoff.delay == 0.01  # reset by the read that succeeded
    assert statuses(*events) == ["processed", "processed"]


def test_a_stream_and_group_lost_under_the_loop_are_recreated_and_reading_goes_on(worker_loop):
    worker, stream, settings, client = worker_loop()
    first, after = checkouts(1, "before"), checkouts(1, "after")
    enqueue(client, settings, *first)
    reads = iter(range(2))

    def lose_everything_once() -> None:
        if next(reads, None) == 1:  # after the first batch: Redis came back empty, and a new event arrived
            client.delete(settings.keys.stream)
            enqueue(client, settings, *after)

    stream.on_read = lose_everything_once
    stream.until = lambda: len(stream.batches) == 2
    before = counted("billing_redis_errors_total")
    worker.run()
    assert statuses(*first, *after) == ["processed", "processed"]
    assert counted("billing_redis_errors_total") - before == 1
    assert stream.group_exists() and client.xpending(settings.keys.stream, settings.consumer_group)["pending"] == 0


def test_after_missed_deadlines_the_batch_grows_back_by_doubling_up_to_its_size(worker_loop):
    worker, stream, settings, client = worker_loop(batch_size=8)
    worker.batch_size = 1  # as after missed deadlines (tests/test_redis_faults.py shows it halving)
    events = checkouts(23, "grow")
    enqueue(client, settings, *events)
    stream.until = lambda: sum(map(len, stream.batches)) == len(events)
    worker.run()
    assert [len(batch) for batch in stream.batches] == [1, 2, 4, 8, 8]
    assert stream.reads[:5] == [1, 2, 4, 8, 8]
    assert statuses(*events) == ["processed"] * len(events)
