"""A consumer's /metrics on METRICS_PORT (a real process, real Redis and database): events by outcome,
timings, the group-wide gauges read from Redis at scrape time, reclaims, and a METRICS_PORT in use."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from billing.config import Settings
from harness import free_port, service_env, wait_for
from receiver.sample_events import build_event
from tests.consumer.process_helpers import consumer, enqueue
from tests.consumer_metrics_helpers import events_by, scrape, scrape_when, value

STREAM, GROUP, DEAD = "stripe:events", "billing", "stripe:events:dead"
KEYS = Settings().keys


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def metrics_env(consumer_env, port):
    return {**consumer_env, "METRICS_PORT": str(port)}


def test_events_by_outcome_timings_and_backlog(metrics_env, queue, r, port, tmp_path):
    start = int(time.time()) - 100
    ids = dict(customer_id="cus_m1", subscription_id="sub_m1")
    checkout = build_event("checkout.session.completed", "m1", created=start, **ids)
    paid = build_event("invoice.paid", "m1", created=start + 2, **ids)
    older = build_event("customer.subscription.updated", "m1", created=start + 1, **ids)  # after paid: stale
    unknown = {**build_event("invoice.paid", "m2"), "type": "customer.created"}  # not handled: ignored
    broken = build_event("invoice.paid", "m3")
    broken["data"]["object"] = "not an invoice"  # fails each time: failed, then dead at MAX_DELIVERIES=2
    for event in (checkout, paid, older, unknown, broken):
        enqueue(queue, event)
    fields = r.xrange(STREAM, count=1)[0][1]
    r.xadd(STREAM, fields)  # the checkout event once more, past the receiver's dedupe: a duplicate

    worker = consumer(metrics_env, tmp_path, MAX_DELIVERIES="2", CLAIM_IDLE_MS="1000")
    try:
        wait_for(
            lambda: value(scrape(port), "billing_events_total", event_type="invoice.paid", outcome="dead"),
            what=f"the broken event to be dead-lettered: {worker.output()[-2000:]}",
        )
        wait_for(lambda: value(scrape(port), "billing_pending_entries") == 0, what="nothing pending")
        scraped_at = time.time()
        samples = scrape(port)
    finally:
        worker.stop()

    assert events_by(samples) == {
        ("checkout.session.completed", "processed"): 1,
        ("invoice.paid", "processed"): 1,
        ("customer.subscription.updated", "stale"): 1,
        ("customer.created", "ignored"): 1,
        ("checkout.session.completed", "duplicate"): 1,
        ("invoice.paid", "failed"): 1,
        ("invoice.paid", "dead"): 1,
    }
    applied = sum(events_by(samples).values())
    assert value(samples, "billing_event_processing_seconds_count") == applied
    assert value(samples, "billing_event_end_to_end_seconds_count") == applied
    assert 0 < value(samples, "billing_event_end_to_end_seconds_sum") < 60
    assert value(samples, "billing_redis_up") == 1
    assert value(samples, "billing_stream_length") == r.xlen(STREAM) == 6
    assert value(samples, "billing_group_lag") == 0
    assert value(samples, "billing_pending_entries") == 0
    assert value(samples, "billing_oldest_pending_age_seconds") == 0
    assert value(samples, "billing_dead_letters") == r.xlen(DEAD) == 1
    assert value(samples, "billing_db_errors_total") == 0
    # An idle consumer reads and finds nothing every --block-ms: that counts as success.
    assert scraped_at - 5 < value(samples, "billing_consumer_last_success_timestamp_seconds") <= time.time()


def test_pending_age_and_reclaim(metrics_env, queue, r, port, tmp_path):
    events = [build_event("invoice.paid", f"p{n}") for n in range(4)]
    for event in events:
        enqueue(queue, event)
    r.xgroup_create(STREAM, GROUP, id="0")
    held = r.xreadgroup(GROUP, "gone", {STREAM: ">"}, count=2)[0][1]  # a consumer that read two, then vanished
    oldest_ms = int(held[0][0].decode().split("-")[0])

    worker = consumer(metrics_env, tmp_path, CLAIM_IDLE_MS="10000")  # those two are reclaimed after 10 s idle
    try:
        wait_for(lambda: sum(events_by(scrape(port)).values()) == 2, what="the two others to be applied")
        before, samples, after = time.time(), scrape(port), time.time()
        assert value(samples, "billing_pending_entries") == r.xpending(STREAM, GROUP)["pending"] == 2
        assert value(samples, "billing_group_lag") == 0
        assert value(samples, "billing_stream_length") == 4
        age = value(samples, "billing_oldest_pending_age_seconds")
        assert before - oldest_ms / 1000 - 0.01 <= age <= after - oldest_ms / 1000 + 0.01
        assert value(samples, "billing_reclaimed_total") == 0

        # Make them look idle for an hour: the consumer's next tick takes them over (XAUTOCLAIM).
        r.xclaim(STREAM, GROUP, "gone", 0, [entry_id for entry_id, _ in held], idle=3_600_000, justid=True)
        wait_for(lambda: value(scrape(port), "billing_reclaimed_total") == 2, what="the reclaim")
        wait_for(lambda: value(scrape(port), "billing_pending_entries") == 0, what="the reclaimed to be applied")
        samples = scrape(port)
    finally:
        worker.stop()
    assert events_by(samples) == {("invoice.paid", "processed"): 4}
    assert value(samples, "billing_oldest_pending_age_seconds") == 0


def test_scrape_succeeds_while_redis_is_down(own_redis, db, database_url, port, tmp_path):
    env = service_env(own_redis.url, database_url, METRICS_PORT=str(port))
    worker = consumer(env, tmp_path)
    try:
        wait_for(lambda: value(scrape(port), "billing_redis_up") == 1, what="a first scrape")
        own_redis.kill()
        samples = wait_for(
            lambda: scrape_when(port, lambda s: value(s, "billing_redis_up") == 0), what="a scrape without Redis"
        )
        assert value(samples, "billing_stream_length") is None  # not a made-up 0
        assert value(samples, "billing_reclaimed_total") == 0  # the process's own metrics are still there
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()


def test_metrics_port_in_use_is_one_clear_error(metrics_env, port, tmp_path):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port))
        taken.listen()
        worker = consumer(metrics_env, tmp_path)
        assert worker.wait(timeout=30) != 0
        worker.stop()
    output = worker.output()
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == (
        f"Error: METRICS_PORT={port}: cannot serve /metrics: Address already in use"
    )


def test_metrics_port_zero_serves_nothing(metrics_env, port, queue, tmp_path):
    enqueue(queue, build_event("invoice.paid", "z1"))
    worker = consumer(metrics_env, tmp_path, METRICS_PORT="0")
    try:
        wait_for(lambda: "-> processed" in worker.output(), what="the event to be applied")
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    finally:
        worker.stop()
