"""Reconciliation: consumers with STRIPE_API_KEY list the events whose webhooks failed (tests/consumer/stripe_server.py
stands in for Stripe) and queue what we do not have, one consumer per interval, without ever holding up event
processing; errors are counted, never raised."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY

from billing.event_queue import EventQueue
from billing.redis_io import connect_redis
from billing.vocabulary import HANDLED_TYPES
from consumer.backfill import Enqueuer, Found
from consumer.reconcile import (
    SETTLE_SECONDS,
    WINDOW_SECONDS,
    Reconciler,
    ReconcilerThread,
)
from consumer.stripe_api import StripeApi
from harness import wait_for
from models.tables import Subscription
from receiver.sample_events import API_VERSIONS, build_event
from tests.consumer.ops_helpers import KEYS, STREAM, invoke, start_consumer
from tests.consumer.stripe_server import API_KEY

NOW = int(time.time())


def reconciler(
    fake_stripe, r, owner: str = "c1", interval: int = 300, base: str | None = None, **api_options
) -> Reconciler:
    api = StripeApi(API_KEY, base or fake_stripe.url, **{"network_retries": 0, **api_options})
    return Reconciler(api, Enqueuer(r, KEYS, 3600), r, KEYS, interval, owner)


def reconciled(result: str) -> float:
    return REGISTRY.get_sample_value("billing_reconciled_events_total", {"result": result}) or 0.0


def queued_ids(r) -> list[str]:
    return [fields[b"event_id"].decode() for _id, fields in r.xrange(STREAM)]


def test_a_pass_queues_the_failed_deliveries_we_do_not_have(fake_stripe, r, sqlite_url):
    failed = [
        fake_stripe.add_event(build_event(t, f"r{i}", created=NOW - 3600 + i, api_version=API_VERSIONS[i % 2]))
        for i, t in enumerate(HANDLED_TYPES)
    ]
    had = failed[2]
    r.set(KEYS.seen(had["id"]), "processed")
    fake_stripe.add_event(build_event("invoice.paid", "ok", created=NOW - 60), delivery_success=True)
    fake_stripe.add_event(build_event("invoice.paid", "old", created=NOW - WINDOW_SECONDS - 60))  # backfill's
    fake_stripe.add_event(build_event("invoice.paid", "in-flight", created=int(time.time())))  # Stripe is sending it
    before = {found: reconciled(found.value) for found in Found}
    now = int(time.time())
    counts = reconciler(fake_stripe, r).run_if_ours()
    assert counts[Found.QUEUED] == len(failed) - 1 and counts[Found.ALREADY_HAD] == 1
    assert queued_ids(r) == [e["id"] for e in failed if e is not had]  # oldest first
    assert reconciled("queued") - before[Found.QUEUED] == len(failed) - 1
    assert reconciled("already_had") - before[Found.ALREADY_HAD] == 1
    [request] = fake_stripe.event_requests()
    assert request.params["delivery_success"] == ["false"]
    assert abs(int(request.params["created[gte]"][0]) - (now - WINDOW_SECONDS)) <= 1
    assert abs(int(request.params["created[lte]"][0]) - (now - SETTLE_SECONDS)) <= 1
    assert sorted(v for name, [v] in request.params.items() if name.startswith("types[")) == sorted(HANDLED_TYPES)


def test_one_consumer_per_interval(fake_stripe, r, redis_url):
    assert reconciler(fake_stripe, r, "c1", interval=2).run_if_ours() is not None
    assert reconciler(fake_stripe, r, "c2", interval=2).run_if_ours() is None
    assert r.get(KEYS.reconcile_lock) == b"c1" and 1700 <= r.pttl(KEYS.reconcile_lock) <= 1800
    time.sleep(1.85)
    assert reconciler(fake_stripe, r, "c2", interval=2).run_if_ours() is not None
    assert len(fake_stripe.event_requests()) == 2


@pytest.mark.parametrize("fault", ["500", "429", "unreachable", "wrong key", "redis down"])
def test_errors_are_counted_and_never_raised(fault, fake_stripe, r, redis_url, sqlite_url):
    options = {}
    if fault == "500":
        fake_stripe.fail(500)
    elif fault == "429":
        fake_stripe.fail(429, times=5, retry_after=0.2)
        options = {"rate_limit_wait": 0.6}
    elif fault == "unreachable":
        options = {"base": "http://127.0.0.1:1"}
    elif fault == "wrong key":
        fake_stripe.api_key = "sk_test_another_key"
    fake_stripe.add_event(build_event("invoice.paid", "e1"))
    client = connect_redis("redis://127.0.0.1:1/0") if fault == "redis down" else r
    one = reconciler(fake_stripe, client, **options)
    before = reconciled("error")
    ReconcilerThread(one, 300).run_once()  # does not raise
    assert reconciled("error") == before + 1
    assert r.xlen(STREAM) == 0


def test_reconcile_events_runs_a_pass_now(redis_url, sqlite_url, fake_stripe, r):
    fake_stripe.add_event(build_event("invoice.paid", "n1", created=NOW - 120))
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": sqlite_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
    }
    assert "queued 1, already had 0" in invoke(env, "reconcile", "events").stdout
    assert json.loads(invoke(env, "reconcile", "events", "--json").stdout)["already_had"] == 1


def test_a_receiver_outage_is_healed_within_one_interval(redis_url, sqlite_url, fake_stripe, r, tmp_path):
    """Stripe's deliveries never reached us (the receiver was down, or the secret wrong): the events exist only in
    Stripe. Running consumers find and apply them within one RECONCILE_INTERVAL_SECONDS, one consumer a pass."""
    stripe_env = {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake_stripe.url, "RECONCILE_INTERVAL_SECONDS": "1"}
    consumers = [start_consumer(redis_url, sqlite_url, tmp_path, f"heal-{n}", **stripe_env) for n in (1, 2)]
    keyless = start_consumer(redis_url, sqlite_url, tmp_path, "heal-off")
    try:
        for proc in consumers:
            wait_for(
                lambda p=proc: "reconciling from Stripe's Events API every 1s" in p.output(),
                what="the reconciler to start",
            )
        wait_for(lambda: len(fake_stripe.event_requests()) >= 2, what="a first pass or two, with nothing to find")
        stories = {}
        for n, api in enumerate(API_VERSIONS):
            ids = {"customer_id": f"cus_heal{n}", "subscription_id": f"sub_heal{n}"}
            stories[f"heal{n}"] = [
                build_event(
                    "checkout.session.completed", f"heal{n}", tier="basic", api_version=api, created=NOW - 120, **ids
                ),
                build_event(
                    "customer.subscription.updated", f"heal{n}", tier="elite", api_version=api, created=NOW - 90, **ids
                ),
            ]
        started = time.monotonic()
        for events in stories.values():
            for event in events:
                fake_stripe.add_event(event)  # its webhook failed: delivery_success=false
        wait_for(
            lambda: {s.community_id: s.tier for s in Subscription.select()} == {c: "elite" for c in stories},
            timeout=10,
            what="the missed events to be applied",
        )
        assert time.monotonic() - started < 1 + 2.5  # one interval, plus a batch
        passes = fake_stripe.event_requests()
        assert all(r.params["delivery_success"] == ["false"] for r in passes)
        elapsed = passes[-1].at - passes[0].at
        assert len(passes) <= elapsed / 0.9 + 2, "more than one pass per interval: the lock did not hold"
        assert sorted(queued_ids(r)) == sorted(e["id"] for events in stories.values() for e in events)
        assert keyless.output().count("reconciliation from Stripe's Events API is off") == 1
    finally:
        for proc in (*consumers, keyless):
            proc.stop()


def test_a_hanging_stripe_never_holds_up_events_or_shutdown(redis_url, sqlite_url, fake_stripe, r, tmp_path):
    fake_stripe.slow(30, times=100)  # every request hangs past the reconciler's timeout
    proc = start_consumer(
        redis_url,
        sqlite_url,
        tmp_path,
        "patient",
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=fake_stripe.url,
        RECONCILE_INTERVAL_SECONDS="1",
    )
    try:
        wait_for(lambda: fake_stripe.requests, what="the reconciler to ask Stripe")
        event = build_event("checkout.session.completed", "meanwhile", tier="premium")
        EventQueue(r, KEYS, 3600).enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())
        wait_for(
            lambda: Subscription.get_or_none(Subscription.community_id == "meanwhile"),
            timeout=5,
            what="the event to be applied while Stripe hangs",
        )
    finally:
        started = time.monotonic()
        proc.stop()
    assert proc.popen.returncode == 0 and time.monotonic() - started < 5
