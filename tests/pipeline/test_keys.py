"""Redis key names: with the default settings every key is the one earlier releases used (existing deployments keep
their data); KEY_PREFIX moves the deployment's own keys; and two deployments with their own KEY_PREFIX, STREAM_KEY and
DEAD_LETTER_KEY share one Redis without sharing a key: receiver, consumer, sweep, reconciliation and backfill."""

from __future__ import annotations

import dataclasses
import json

from billing.config import Settings
from consumer.backfill import Cursor, Enqueuer, Window
from consumer.reconcile import Reconciler
from consumer.stream import EventStream
from consumer.sweep import sweep_if_ours
from consumer.worker import Worker
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import broken_event
from tests.receiver.api_helpers import ents
from tests.stripe_helpers import sign


def test_the_default_keys_are_the_names_earlier_releases_used():
    keys = Settings.from_env({}).keys
    assert (keys.stream, keys.dead_letters) == ("stripe:events", "stripe:events:dead")
    assert keys.seen("evt_1") == "stripe:events:seen:evt_1"
    assert keys.failures == "stripe:events:failures"
    assert keys.backfill_cursor == "stripe:events:backfill:cursor"
    assert keys.reconcile_lock == "stripe:events:reconcile:lock"
    assert keys.sweep_lock == "billing:sweep:lock"
    assert keys.entitlement_answer("42") == "billing:entitlement-cache:answer:42"
    assert keys.entitlement_token("42") == "billing:entitlement-cache:token:42"
    assert keys.entitlements("42") == (keys.entitlement_answer("42"), keys.entitlement_token("42"))


def test_key_prefix_moves_the_sweep_lock_and_the_cache_keys():
    keys = Settings.from_env({"KEY_PREFIX": "acme"}).keys
    assert keys.sweep_lock == "acme:sweep:lock"
    assert keys.entitlements("42") == ("acme:entitlement-cache:answer:42", "acme:entitlement-cache:token:42")
    # The stream's own keys follow STREAM_KEY, as they always did.
    assert (keys.seen("evt_1"), keys.failures) == ("stripe:events:seen:evt_1", "stripe:events:failures")


class NoFailedDeliveries:
    """Stripe's Events API with nothing to reconcile: the reconciler takes its turn and queues nothing."""

    def list_events(self, **_filters):
        return iter(())


ACME = {"key_prefix": "acme", "stream_key": "acme:events", "dead_letter_key": "acme:events:dead"}


def run_deployment(make_client, settings: Settings, db, r, overrides: dict, event: dict) -> tuple[dict, list[str]]:
    """One deployment's receiver and consumer through everything that writes a key: webhooks queued (their dedupe
    marks), one poison event dead-lettered and another failed once (the failure counts), an answer cached (answer
    and token), a sweep and a reconciliation (their locks), a backfill cursor. Returns what each step saw of
    anything already in Redis, and the ids of the events it queued."""
    settings = dataclasses.replace(settings, max_deliveries=2, **overrides)
    keys = settings.keys
    receiver = make_client(max_deliveries=2, **overrides)
    worker = Worker(settings, db, r, "w1", stream=EventStream(r, settings, "w1"))
    worker.stream.ensure_group()
    dead, failing = broken_event("poison-a"), broken_event("poison-b")

    def post(posted: dict) -> str:
        body = json.dumps(posted).encode()
        return receiver.post("/webhooks/stripe", data=body, headers=sign(body)).get_json()["status"]

    seen = {"dead": post(dead)}
    worker.process(worker.stream.read_new(10, 10))  # fails once
    worker.process(worker.stream.retry_own(lambda _idle, _deliveries: True, 10))  # fails again: a dead letter
    seen["event"], seen["failing"] = post(event), post(failing)
    worker.process(worker.stream.read_new(10, 10))
    seen["source"] = ents(receiver, "k1")["source"]
    assert ents(receiver, "k1")["source"] == "cache"
    seen["swept"] = sweep_if_ours(db, r, keys, "w1")
    reconciler = Reconciler(NoFailedDeliveries(), Enqueuer(r, keys, 3600), r, keys, 300, "w1")
    seen["reconciled"] = reconciler.run_if_ours() is not None
    window = Window(0, 1)
    seen["cursor"] = Cursor(r, keys).load(window)
    Cursor(r, keys).save(window, (1, "evt_backfilled"))
    assert r.xlen(keys.dead_letters) == 1 and r.hlen(keys.failures) == 1
    return seen, [dead["id"], event["id"], failing["id"]]


def names(r) -> set[str]:
    return {key.decode() for key in r.keys("*")}


def test_two_deployments_on_one_redis_share_no_key(make_client, settings, db, r):
    event = build_event("checkout.session.completed", "k1", tier="premium")
    first, ids = run_deployment(make_client, settings, db, r, {}, event)
    assert first == {
        "dead": "queued",
        "event": "queued",
        "failing": "queued",
        "source": "database",
        "swept": [],
        "reconciled": True,
        "cursor": None,
    }
    assert names(r) == {
        "stripe:events",
        "stripe:events:dead",
        *(f"stripe:events:seen:{i}" for i in ids),
        "stripe:events:failures",
        "stripe:events:backfill:cursor",
        "stripe:events:reconcile:lock",
        "billing:sweep:lock",
        "billing:entitlement-cache:answer:k1",
        "billing:entitlement-cache:token:k1",
    }
    before = names(r)

    second, ids = run_deployment(make_client, settings, db, r, ACME, event)
    # It met nothing of the first's: the same event queued again, the answer not cached yet, the sweep's and the
    # reconciliation's turns free, no cursor to resume from.
    assert second == first
    assert names(r) - before == {
        "acme:events",
        "acme:events:dead",
        *(f"acme:events:seen:{i}" for i in ids),
        "acme:events:failures",
        "acme:events:backfill:cursor",
        "acme:events:reconcile:lock",
        "acme:sweep:lock",
        "acme:entitlement-cache:answer:k1",
        "acme:entitlement-cache:token:k1",
    }
    assert before <= names(r)  # the first's keys all still there
