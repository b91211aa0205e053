"""The consumer as a real process: crashes (SIGKILL at the worst moments), SIGTERM, failing events,
several consumers at once, and the whole pipeline from `receiver send` to the database."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from billing.config import Settings
from harness import REPO, start_receiver, wait_for
from models.tables import AuditLog, Subscription, WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.process_helpers import consumer, enqueue, lifecycle
from tests.stripe_helpers import load_peer_events, sign

STREAM, GROUP = "stripe:events", "billing"
KEYS = Settings().keys


def pending(client) -> int:
    return client.xpending(STREAM, GROUP)["pending"]


def test_sigkill_before_commit_applies_each_event_once(consumer_env, queue, redis_server, tmp_path):
    events = lifecycle("k1", 1_700_000_000) + lifecycle("k2", 1_700_000_000, "2024-06-20")
    for event in events:
        enqueue(queue, event)

    crashed = consumer(consumer_env, tmp_path, "c1", BILLING_FAULT="before_commit")
    assert crashed.wait() == -signal.SIGKILL, crashed.output()
    assert WebhookEvent.select().count() == 0  # the transaction died with the process
    assert pending(redis_server.client()) == len(events)  # delivered, not acknowledged

    survivor = consumer(consumer_env, tmp_path, "c1")  # the same name finds its own pending entries first
    wait_for(lambda: pending(redis_server.client()) == 0, what="pending entries to be acknowledged")
    survivor.stop()
    assert survivor.popen.returncode == 0
    assert_applied_once(events, ["k1", "k2"])


def test_sigkill_after_commit_is_recognised_not_reapplied(consumer_env, queue, redis_server, tmp_path):
    events = lifecycle("k3", 1_700_000_000)
    for event in events:
        enqueue(queue, event)

    crashed = consumer(consumer_env, tmp_path, "c1", BILLING_FAULT="after_commit")
    assert crashed.wait() == -signal.SIGKILL, crashed.output()
    assert WebhookEvent.select().count() == len(events)  # committed ...
    assert pending(redis_server.client()) == len(events)  # ... but never acknowledged

    survivor = consumer(consumer_env, tmp_path, "c1")
    wait_for(lambda: pending(redis_server.client()) == 0, what="redelivered entries to be acknowledged")
    survivor.stop()
    assert survivor.output().count("-> duplicate") == len(events)
    assert_applied_once(events, ["k3"])


def test_a_crash_between_commit_and_cache_drop_is_healed_by_the_redelivery(consumer_env, queue, settings, db, tmp_path):
    """The cached answer must not outlive a committed cancellation by its TTL: the redelivery, recognised as
    applied, drops the community's cached entitlements before it is acknowledged."""
    from models.db import database_proxy
    from receiver import create_app

    app = create_app(settings)
    database_proxy.initialize(db)
    api = app.test_client()
    ids = dict(customer_id="cus_k4", subscription_id="sub_k4")
    enqueue(queue, build_event("checkout.session.completed", "k4", tier="elite", created=1_700_000_000, **ids))
    first = consumer(consumer_env, tmp_path, "c1")
    wait_for(lambda: Subscription.get_or_none(Subscription.community_id == "k4"), what="the checkout applied")
    first.stop()
    api.get("/v1/communities/k4/entitlements")
    cached = api.get("/v1/communities/k4/entitlements").get_json()
    assert (cached["source"], cached["tier"]) == ("cache", "elite")

    enqueue(queue, build_event("customer.subscription.deleted", "k4", created=1_700_000_100, **ids))
    crashed = consumer(consumer_env, tmp_path, "c1", BILLING_FAULT="after_commit")
    assert crashed.wait() == -signal.SIGKILL, crashed.output()
    assert Subscription.get(Subscription.community_id == "k4").status == "canceled"  # committed, cache not dropped
    assert api.get("/v1/communities/k4/entitlements").get_json()["tier"] == "elite"

    survivor = consumer(consumer_env, tmp_path, "c1")
    wait_for(lambda: pending(queue.client) == 0, what="the redelivery to be acknowledged")
    survivor.stop()
    assert "-> duplicate" in survivor.output()
    answer = api.get("/v1/communities/k4/entitlements").get_json()
    assert (answer["source"], answer["tier"], answer["status"]) == ("database", "starter", "canceled")


def assert_applied_once(events: list[dict], communities: list[str]) -> None:
    rows = list(WebhookEvent.select())
    assert sorted(r.stripe_event_id for r in rows) == sorted(e["id"] for e in events)
    assert {r.status for r in rows} == {"processed"}
    # every event wrote its audit row(s) exactly once: one each, plus grace_period_started per failure
    per_event = {}
    for row in AuditLog.select():
        event_id = json.loads(row.event_data)["stripe_event_id"]
        per_event[event_id] = per_event.get(event_id, 0) + 1
    for event in events:
        assert per_event.get(event["id"]) == (2 if event["type"] == "invoice.payment_failed" else 1), event["type"]
    for community in communities:
        sub = Subscription.get(Subscription.community_id == community)
        assert (sub.tier, sub.status, sub.grace_until) == ("elite", "active", None)


def test_sigterm_finishes_the_batch_in_hand_and_exits_zero(consumer_env, queue, redis_server, tmp_path):
    events = [e for n in range(40) for e in lifecycle(f"t{n}", 1_700_000_000)]
    worker = consumer(consumer_env, tmp_path, "c1", "--batch", "20")
    for event in events:
        enqueue(queue, event)
    wait_for(lambda: WebhookEvent.select().count() > 0, what="the first batch to commit")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    client = redis_server.client()
    assert pending(client) == 0  # everything read was applied and acknowledged before exiting
    delivered = client.xinfo_groups(STREAM)[0]["entries-read"]
    assert WebhookEvent.select().count() == delivered
    assert 0 < delivered <= len(events)


def test_a_failing_event_is_recorded_and_left_pending_while_others_go_on(consumer_env, queue, redis_server, tmp_path):
    bad = build_event("invoice.paid", "f1")
    bad["data"]["object"] = "not an invoice"
    good = lifecycle("f2", 1_700_000_000)
    enqueue(queue, bad)
    for event in good:
        enqueue(queue, event)

    worker = consumer(consumer_env, tmp_path, "c1")
    wait_for(
        lambda: WebhookEvent.select().where(WebhookEvent.status == "processed").count() == len(good),
        what="the good events to be processed",
    )
    worker.stop()
    failed = WebhookEvent.get(WebhookEvent.stripe_event_id == bad["id"])
    assert failed.status == "failed" and "data.object is not an object" in failed.error_message
    client = redis_server.client()
    assert pending(client) == 1
    assert client.xpending_range(STREAM, GROUP, "-", "+", 10)[0]["consumer"] == b"c1"


def test_two_consumers_apply_every_event_exactly_once(consumer_env, queue, redis_server, tmp_path):
    events = [e for n in range(30) for e in lifecycle(f"p{n % 6}-{n}", 1_700_000_000 + n)]
    workers = [consumer(consumer_env, tmp_path, name, "--batch", "10") for name in ("c1", "c2")]
    for event in events:
        enqueue(queue, event)
    wait_for(
        lambda: WebhookEvent.select().count() == len(events) and pending(redis_server.client()) == 0,
        timeout=60,
        what="all events applied by two consumers",
    )
    for worker in workers:
        worker.stop()
    assert WebhookEvent.select().where(WebhookEvent.status != "processed").count() == 0
    assert AuditLog.select().count() == len(events) + 30  # one each, plus grace_period_started per failure
    assert Subscription.select().where(Subscription.tier == "elite").count() == 30


def test_the_whole_pipeline_from_send_to_the_database(consumer_env, redis_server, tmp_path):
    receiver, base = start_receiver(consumer_env, str(tmp_path))
    worker = consumer(consumer_env, tmp_path, "c1")
    try:
        for event_type in ("checkout.session.completed", "invoice.payment_failed"):
            sent = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "receiver",
                    "send",
                    event_type,
                    "--community",
                    "42",
                    "--tier",
                    "premium",
                    "--url",
                    f"{base}/webhooks/stripe",
                ],
                env=consumer_env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert sent.returncode == 0 and '"status":"queued"' in sent.stdout, sent.stdout + sent.stderr
        sub = wait_for(
            lambda: Subscription.get_or_none((Subscription.community_id == "42") & (Subscription.status == "past_due")),
            what="community 42 to be past due",
        )
        assert sub.tier == "premium" and sub.grace_until is not None

        # Every captured peer event is accepted and recorded; none fails the consumer.
        import urllib.request

        distinct = set()
        for _name, body in load_peer_events():
            distinct.add(json.loads(body)["id"])
            request = urllib.request.Request(f"{base}/webhooks/stripe", data=body, headers=sign(body), method="POST")
            assert urllib.request.urlopen(request, timeout=5).status == 200
        wait_for(
            lambda: (
                WebhookEvent.select().where(WebhookEvent.stripe_event_id.in_(list(distinct))).count() == len(distinct)
            ),
            what="every peer event to be recorded",
        )
        statuses = {row.status for row in WebhookEvent.select().where(WebhookEvent.stripe_event_id.in_(list(distinct)))}
        assert statuses <= {"processed", "ignored", "stale", "deferred"}
        wait_for(lambda: pending(redis_server.client()) == 0, what="nothing left pending")
    finally:
        worker.stop()
        receiver.stop()
    assert worker.popen.returncode == 0
