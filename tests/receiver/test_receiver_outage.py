"""The receiver when Redis goes away: a quick 503 that Stripe retries, nothing acknowledged then lost."""

from __future__ import annotations

import signal
import time

import pytest

from billing.config import Settings
from harness import SECRET
from models.db import database_proxy
from receiver import create_app
from tests.receiver_helpers import WEBHOOK, entries, event_bytes, redis_client
from tests.stripe_helpers import sign


@pytest.fixture
def app(own_redis, tmp_path):
    app = create_app(
        Settings(webhook_secrets=(SECRET,), redis_url=own_redis.url, database_url=f"sqlite:///{tmp_path}/x.db")
    )
    yield app
    app.extensions["redis"].close()
    database_proxy.initialize(None)


def timed_post(client, body):
    started = time.monotonic()
    response = client.post(WEBHOOK, data=body, headers=sign(body))
    return response, time.monotonic() - started


def assert_quick_503(response, elapsed):
    assert response.status_code == 503, response.get_data()
    assert elapsed < 1.0, f"503 took {elapsed:.2f}s"
    assert response.is_json and response.get_json()["error"]
    assert int(response.headers["Retry-After"]) > 0


def test_redis_killed_gives_a_quick_503_then_the_retry_is_queued(app, own_redis):
    client = app.test_client()
    _, warm = event_bytes("invoice.paid")
    assert client.post(WEBHOOK, data=warm, headers=sign(warm)).status_code == 200  # a pooled connection exists

    own_redis.kill()
    event, body = event_bytes("invoice.payment_failed")
    assert_quick_503(*timed_post(client, body))
    assert_quick_503(*timed_post(client, body))  # and again, with no connection left in the pool

    own_redis.start()
    response, _ = timed_post(client, body)  # Stripe's retry
    assert response.status_code == 200
    assert response.get_json()["status"] == "queued"  # the 503 stored nothing, not even the dedupe mark
    with redis_client(own_redis.url) as r:
        assert [e["event_id"].decode() for e in entries(r)][-1] == event["id"]


def test_redis_hanging_gives_a_quick_503_and_the_event_is_never_stored_twice(app, own_redis):
    client = app.test_client()
    _, warm = event_bytes("invoice.paid")
    assert client.post(WEBHOOK, data=warm, headers=sign(warm)).status_code == 200
    event, body = event_bytes("customer.subscription.deleted")

    own_redis.process.send_signal(signal.SIGSTOP)  # accepts TCP, answers nothing
    try:
        assert_quick_503(*timed_post(client, body))
    finally:
        own_redis.process.send_signal(signal.SIGCONT)

    # The timed-out command may have run once Redis woke up; either way the retry is answered 200
    # and the event is in the stream exactly once.
    response, _ = timed_post(client, body)
    assert response.status_code == 200
    assert response.get_json()["status"] in {"queued", "duplicate"}
    with redis_client(own_redis.url) as r:
        assert [e["event_id"].decode() for e in entries(r)].count(event["id"]) == 1


def test_an_acknowledged_event_survives_a_redis_crash(app, own_redis):
    client = app.test_client()
    event, body = event_bytes("checkout.session.completed")
    response = client.post(WEBHOOK, data=body, headers=sign(body))
    assert response.status_code == 200 and response.get_json()["status"] == "queued"

    own_redis.kill()  # SIGKILL: no shutdown save; only the fsynced append-only file remains
    own_redis.start()

    with redis_client(own_redis.url) as r:
        [entry] = entries(r)
    assert entry["event_id"].decode() == event["id"]
    assert entry["payload"] == body
    # The dedupe mark survived too: Stripe's redelivery is not queued a second time.
    again = client.post(WEBHOOK, data=body, headers=sign(body))
    assert again.status_code == 200 and again.get_json()["status"] == "duplicate"


def test_readyz_names_redis_when_it_is_down(app, own_redis):
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    own_redis.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    answer = response.get_json()
    assert answer["status"] == "unavailable"
    assert answer["checks"]["redis"].startswith("failed")
    assert answer["checks"]["database"] == "ok"
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    own_redis.start()
    assert client.get("/readyz").status_code == 200
