"""Faults the consumer survives, with real processes: SIGKILLed consumers, Redis killed and restarted
(with and without its append-only file), a PostgreSQL server stopped under a running consumer,
handlers that keep failing, and a stream that must stay bounded."""

from __future__ import annotations

import json
import signal
import time

import pytest

from billing.config import Settings
from consumer.stream import EventStream
from harness import PostgresServer, Process, RedisServer, service_env, wait_for
from models.db import open_database
from models.migrations import migrate
from models.tables import WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.fault_helpers import DEAD, GROUP, STREAM, applied_once, consumer, enqueue_all, events_for, pending

FAST = {"CLAIM_IDLE_MS": "1000", "MAX_DELIVERIES": "3"}


def test_sigkill_at_random_moments_loses_and_doubles_nothing(redis_server, redis_url, db, database_url, tmp_path):
    """Two consumers; one is SIGKILLed again and again mid-stream and restarted under a new name,
    so only reclaiming (XAUTOCLAIM after CLAIM_IDLE_MS) can finish what it held."""
    env = service_env(redis_url, database_url, **FAST)
    client = redis_server.client()
    events = events_for(400)
    enqueue_all(client, events)
    steady = consumer(env, tmp_path, "steady", LOG_LEVEL="WARNING")
    kills = 0
    try:
        for round_ in range(5):
            victim = consumer(env, tmp_path, f"victim-{round_}", LOG_LEVEL="WARNING")
            before = WebhookEvent.select().count()
            wait_for(
                lambda: WebhookEvent.select().count() > before + 10 or WebhookEvent.select().count() == 400,
                what="progress before the kill",
            )
            victim.signal(signal.SIGKILL)
            victim.wait()
            kills += 1
        wait_for(
            lambda: WebhookEvent.select().count() == 400 and pending(client) == 0,
            timeout=60,
            what="every event applied and acknowledged",
        )
    finally:
        steady.stop()
    lost, doubled = applied_once(events)
    print(f"\nfigures: events={len(events)} kills={kills} lost={lost} doubled={doubled}")
    assert (lost, doubled) == (0, 0)
    assert client.xlen(DEAD) == 0


def test_a_failing_event_goes_to_the_dead_letter_stream_without_blocking_others(
    redis_server, redis_url, db, database_url, tmp_path
):
    env = service_env(redis_url, database_url, **FAST)
    client = redis_server.client()
    broken = build_event("invoice.paid", "d1")
    broken["data"]["object"] = "not an invoice"
    good = events_for(10, "g")
    enqueue_all(client, [broken] + good)
    worker = consumer(env, tmp_path, "w1")
    try:
        wait_for(lambda: client.xlen(DEAD) == 1, timeout=30, what="the broken event to be dead-lettered")
        assert applied_once(good) == (0, 0)  # the others were never held up
        wait_for(lambda: pending(client) == 0, what="the original to be acknowledged")
    finally:
        worker.stop()
    [(dead_id, fields)] = client.xrange(DEAD)
    fields = {k.decode(): v for k, v in fields.items()}
    assert fields["event_id"].decode() == broken["id"] and fields["event_type"] == b"invoice.paid"
    assert json.loads(fields["payload"]) == broken
    assert int(fields["deliveries"]) == 3 and b"data.object is not an object" in fields["error"]
    assert 0 < int(fields["first_failed_at"]) <= time.time() * 1000
    assert fields["source_id"] == client.xrange(STREAM, count=1)[0][0]  # the broken event was queued first
    row = WebhookEvent.get(WebhookEvent.stripe_event_id == broken["id"])
    assert row.status == "dead" and "data.object is not an object" in row.error_message
    assert client.hlen(f"{STREAM}:failures") == 0


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_redis_restarts_under_a_running_consumer(appendonly, db, database_url, tmp_path):
    """With AOF, everything acknowledged survives. Without, Redis comes back empty: the consumer
    recreates the stream and group instead of crashing, and the receiver's script works again."""
    redis = RedisServer(appendonly=appendonly).start()
    env = service_env(redis.url, database_url, **FAST)
    worker = consumer(env, tmp_path, "w1")
    try:
        first, second = events_for(20, "a"), events_for(20, "b")
        enqueue_all(redis.client(), first)
        wait_for(lambda: applied_once(first) == (0, 0), what="the first events applied")
        redis.kill()
        wait_for(lambda: "Redis unavailable" in worker.output(), what="the consumer to notice")
        redis.start()
        if not appendonly:
            # It really came back empty (the consumer may already have recreated the stream: empty too).
            assert redis.client().xlen(STREAM) == 0
        enqueue_all(redis.client(), second)
        wait_for(lambda: applied_once(first + second) == (0, 0), timeout=30, what="events after the restart")
        assert worker.popen.poll() is None, worker.output()  # never crashed
        # Committed before acknowledged: the XACK may trail the rows by a moment.
        wait_for(lambda: pending(redis.client()) == 0, what="the events to be acknowledged")
        if appendonly:
            assert redis.client().xlen(STREAM) == 40
    finally:
        worker.stop()
        redis.close()


def test_a_database_outage_of_any_length_dead_letters_nothing(redis_server, redis_url, tmp_path):
    pg = PostgresServer().start()
    try:
        db = open_database(pg.url)
        migrate(db)
        db.close()
        env = service_env(redis_url, pg.url, CLAIM_IDLE_MS="600", MAX_DELIVERIES="2")
        client = redis_server.client()
        worker = consumer(env, tmp_path, "w1")
        before, during = events_for(10, "x"), events_for(30, "y")
        enqueue_all(client, before)
        wait_for(lambda: _count(db) == 10, what="events applied before the outage")
        pg.stop()
        enqueue_all(client, during)
        # Several CLAIM_IDLE_MS and MAX_DELIVERIES cycles pass while the database is down.
        wait_for(lambda: worker.output().count("database unavailable") >= 6, timeout=30, what="the outage to last")
        pg.start()
        wait_for(lambda: _count(db) == 40 and pending(client) == 0, timeout=60, what="recovery")
        worker.stop()
        assert worker.popen.returncode == 0
        assert client.xlen(DEAD) == 0
        statuses = {r.status for r in WebhookEvent.select()}
        assert statuses == {"processed"}
        assert applied_once(before + during) == (0, 0)
    finally:
        pg.close()


def _count(db) -> int:
    try:
        return WebhookEvent.select().count()
    finally:
        db.close()


def test_trim_keeps_everything_pending_or_undelivered(redis_server, redis_url):
    client = redis_server.client()
    now_ms = int(time.time() * 1000)
    old = now_ms - 3_600_000
    ids = [client.xadd(STREAM, {"event_id": f"e{i}"}, id=f"{old + i}-0").decode() for i in range(6)]
    client.xadd(STREAM, {"event_id": "new"})
    client.xgroup_create(STREAM, GROUP, id="0")
    client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=4)  # e0..e3 delivered, e4, e5 and new not yet
    client.xack(STREAM, GROUP, ids[0], ids[1], ids[3])  # e2 stays pending
    stream = EventStream(client, Settings(), "c1")
    assert stream.trim(retention_ms=60_000, now_ms=now_ms) == 2  # e0, e1: acked and old
    left = [fields[b"event_id"] for _, fields in client.xrange(STREAM)]
    assert left == [b"e2", b"e3", b"e4", b"e5", b"new"]
    client.xack(STREAM, GROUP, ids[2])
    assert stream.trim(retention_ms=60_000, now_ms=now_ms) == 2  # e2, e3; e4 and e5 never delivered
    assert stream.trim(retention_ms=60_000, now_ms=now_ms) == 0


def test_a_deadline_not_below_claim_idle_is_refused(redis_url, database_url, tmp_path):
    env = service_env(redis_url, database_url, CLAIM_IDLE_MS="1000")
    proc = Process(["consumer", "run", "--deadline-ms", "1000"], env, str(tmp_path))
    assert proc.wait() != 0
    output = proc.output()
    assert "must be shorter than CLAIM_IDLE_MS" in output and "Traceback" not in output
