"""REDIS_MIN_REPLICAS: a live receiver (gunicorn) against a primary with one replica answers 200 only once the
replica confirmed the event (WAIT, in the same round trip as the enqueue); with the replica stopped, a 503 within
about REDIS_WAIT_MS, counted; with the replica back, 200 again, and Stripe's retry of the 503 is a duplicate."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from harness import RedisReplicated, service_env, start_receiver
from tests.receiver.metrics_helpers import scrape, value
from tests.receiver_helpers import WEBHOOK, entries, event_bytes, redis_client
from tests.stripe_helpers import sign

WAIT_MS = 300


@pytest.fixture
def replicated():
    servers = RedisReplicated(replicas=1).start()
    yield servers
    servers.close()


@pytest.fixture
def receiver(replicated, tmp_path):
    env = service_env(
        replicated.url,
        f"sqlite:///{tmp_path}/billing.db",
        REDIS_MIN_REPLICAS="1",
        REDIS_WAIT_MS=str(WAIT_MS),
        TMPDIR=str(tmp_path),
    )
    proc, base = start_receiver(env, str(tmp_path), workers=1)
    yield base
    proc.stop()


def post(base: str, body: bytes) -> tuple[int, dict, float]:
    request = urllib.request.Request(base + WEBHOOK, data=body, headers=sign(body), method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), time.monotonic() - started


def test_a_200_waits_for_the_replica_and_a_stopped_replica_gives_a_503(replicated, receiver):
    event, body = event_bytes("invoice.paid")
    status, answer, _ = post(receiver, body)
    assert (status, answer["status"]) == (200, "queued")
    replica = replicated.replicas[0]
    with redis_client(replica.url) as r:  # the 200 came after the replica had it
        assert [e["event_id"].decode() for e in entries(r)] == [event["id"]]
    assert post(receiver, body)[:2] == (200, {**answer, "status": "duplicate"})

    replica.pause()  # SIGSTOP: connected, but confirms nothing
    try:
        doubtful, body2 = event_bytes("invoice.payment_failed")
        status, answer, elapsed = post(receiver, body2)
        assert status == 503, answer
        assert "replicas" in answer["error"]
        assert WAIT_MS / 1000 <= elapsed < WAIT_MS / 1000 + 1.0, f"503 after {elapsed:.2f}s"
        status, answer, _ = post(receiver, body)  # a duplicate needs no new confirmation
        assert (status, answer["status"]) == (200, "duplicate")
        samples = scrape(receiver)
        assert value(samples, "billing_webhook_replica_wait_failures_total") == 1
        assert value(samples, "billing_webhook_enqueue_failures_total") == 1
        with redis_client(replicated.url) as r:  # stored on the primary all the same, by the one script
            assert [e["event_id"].decode() for e in entries(r)] == [event["id"], doubtful["id"]]
    finally:
        replica.resume()

    replicated.wait_in_sync(1)
    status, answer, _ = post(receiver, body2)  # Stripe's retry: it survived, so it is a duplicate
    assert (status, answer["status"]) == (200, "duplicate")
    fresh, body3 = event_bytes("customer.subscription.updated")
    status, answer, _ = post(receiver, body3)
    assert (status, answer["status"]) == (200, "queued")
    with redis_client(replica.url) as r:
        assert [e["event_id"].decode() for e in entries(r)] == [event["id"], doubtful["id"], fresh["id"]]


def test_a_killed_replica_gives_a_503_and_the_event_queued_again_after_a_lost_write(replicated, receiver):
    replica = replicated.replicas[0]
    replica.kill()
    event, body = event_bytes("invoice.paid")
    status, answer, elapsed = post(receiver, body)
    assert status == 503 and elapsed < WAIT_MS / 1000 + 1.0, (status, answer, elapsed)
    with redis_client(replicated.url) as r:  # as if a failover had lost the write: nothing survived
        r.flushall()
    replica.start()
    replicated.wait_in_sync(1)
    status, answer, _ = post(receiver, body)  # Stripe's retry is queued again
    assert (status, answer["status"]) == (200, "queued")
