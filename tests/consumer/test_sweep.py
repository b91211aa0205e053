"""Ending expired grace periods: end_expired_grace at a chosen moment, the lock that lets one consumer at a time
sweep, `python -m consumer sweep`, and a running consumer sweeping by itself."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from billing.clock import utcnow
from billing.config import Settings
from consumer.sweep import (
    SWEEP_EVERY_SECONDS,
    end_expired_grace,
    sweep_if_ours,
)
from harness import Process, service_env, wait_for
from models.tables import AuditLog, DeferredEvent, Subscription, WebhookEvent
from tests.consumer.ops_helpers import invoke

NOW = dt.datetime(2026, 3, 16, 12, 0, 0)
SECOND = dt.timedelta(seconds=1)
KEYS = Settings().keys


def row(community_id, status="past_due", grace_until=None, tier="premium") -> Subscription:
    return Subscription.create(community_id=community_id, tier=tier, status=status, grace_until=grace_until)


def status_of(community_id) -> str:
    return Subscription.get(Subscription.community_id == community_id).status


def cache(r, *community_ids) -> None:
    """A cached answer for each, and the guard token of the reader that stored it, as the API would have left them."""
    for community_id in community_ids:
        answer = json.dumps({"community_id": community_id, "tier": "premium"})
        r.set(KEYS.entitlement_answer(community_id), answer, ex=300)
        r.set(KEYS.entitlement_token(community_id), "a-reader's-token", ex=60)


def ended_audits() -> list[tuple[str, dict]]:
    query = AuditLog.select().where(AuditLog.event_type == "grace_period_ended").order_by(AuditLog.id)
    return [(a.community_id, json.loads(a.event_data)) for a in query]


@pytest.fixture
def rows(db):
    """Subscriptions on both sides of NOW, and some the sweep must never touch."""
    row("long-over", grace_until=NOW - dt.timedelta(days=3), tier="elite")
    row("just-over", grace_until=NOW - SECOND)
    row("ends-now", grace_until=NOW)  # grace ends at grace_until itself, as entitlements() says
    row("not-yet", grace_until=NOW + SECOND)
    row("no-grace", grace_until=None)
    row("active", status="active")
    row("unpaid-grace", status="unpaid", grace_until=NOW - dt.timedelta(days=1))
    row("canceled-grace", status="canceled", grace_until=NOW - dt.timedelta(days=1))
    return ["long-over", "just-over", "ends-now"]


def test_expired_grace_becomes_unpaid_audited_and_uncached(db, r, rows):
    everyone = [s.community_id for s in Subscription.select()]
    cache(r, *everyone)
    before = utcnow()
    assert sorted(end_expired_grace(db, r, KEYS, now=NOW)) == sorted(rows)
    statuses = {s.community_id: s.status for s in Subscription.select()}
    assert statuses == {
        "long-over": "unpaid",
        "just-over": "unpaid",
        "ends-now": "unpaid",
        "not-yet": "past_due",
        "no-grace": "past_due",
        "active": "active",
        "unpaid-grace": "unpaid",
        "canceled-grace": "canceled",
    }
    ended = Subscription.select().where(Subscription.community_id.in_(rows))
    assert {s.community_id: s.tier for s in ended} == {
        "long-over": "elite",
        "just-over": "premium",
        "ends-now": "premium",
    }  # kept for a later invoice.paid
    assert all(s.updated_at >= before for s in ended)
    assert sorted(ended_audits()) == sorted(
        [
            ("long-over", {"grace_until": "2026-03-13T12:00:00Z", "tier": "elite"}),
            ("just-over", {"grace_until": "2026-03-16T11:59:59Z", "tier": "premium"}),
            ("ends-now", {"grace_until": "2026-03-16T12:00:00Z", "tier": "premium"}),
        ]
    )
    for community_id in everyone:
        assert r.exists(KEYS.entitlement_answer(community_id)) == (community_id not in rows), community_id
        assert r.exists(KEYS.entitlement_token(community_id)) == (community_id not in rows), community_id

    assert end_expired_grace(db, r, KEYS, now=NOW) == []  # nothing left: no second audit row
    assert len(ended_audits()) == 3
    assert end_expired_grace(db, r, KEYS, now=NOW + SECOND) == ["not-yet"]
    assert status_of("not-yet") == "unpaid"


def test_without_redis_the_sweep_still_writes(db, rows):
    assert sorted(end_expired_grace(db, None, KEYS, now=NOW)) == sorted(rows)
    assert [status_of(c) for c in rows] == ["unpaid"] * 3


def test_one_sweeper_per_interval(db, r):
    row("over", grace_until=utcnow() - SECOND)
    assert sweep_if_ours(db, r, KEYS, "consumer-a") == ["over"]
    assert r.get(KEYS.sweep_lock) == b"consumer-a"
    row("over-too", grace_until=utcnow() - SECOND)
    assert sweep_if_ours(db, r, KEYS, "consumer-b") is None  # within the interval: another consumer's turn is taken
    assert sweep_if_ours(db, r, KEYS, "consumer-a") is None
    assert status_of("over-too") == "past_due"
    # The lock frees before its owner tries again (SWEEP_EVERY_SECONDS later), or a consumer alone would
    # find its own lock there by a hair and skip every other sweep.
    assert 0 < r.pttl(KEYS.sweep_lock) < SWEEP_EVERY_SECONDS * 1000 - 100
    r.delete(KEYS.sweep_lock)  # the interval is over
    assert sweep_if_ours(db, r, KEYS, "consumer-b") == ["over-too"]


def test_sweep_command(db, r, redis_url, database_url):
    row("over", grace_until=utcnow() - SECOND, tier="exclusive")
    row("later", grace_until=utcnow() + dt.timedelta(hours=1))
    cache(r, "over", "later")
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
    result = invoke(env, "sweep", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"ended": ["over"], "deferred_dropped": []}
    assert (status_of("over"), status_of("later")) == ("unpaid", "past_due")
    assert [c for c, _ in ended_audits()] == ["over"]
    assert (r.exists(KEYS.entitlement_answer("over")), r.exists(KEYS.entitlement_answer("later"))) == (0, 1)

    row("over-2", grace_until=utcnow() - SECOND)
    result = invoke(env, "sweep")
    assert (result.exit_code, result.output.strip()) == (0, "grace period ended for 1 communities: over-2")
    result = invoke(env, "sweep")
    assert (result.exit_code, result.output.strip()) == (0, "grace period ended for 0 communities")


def test_sweep_command_drops_deferred_events_no_checkout_claimed_in_30_days(db, r, redis_url, database_url):
    now = int(time.time())
    for event_id, age_days in (("evt_old", 31), ("evt_young", 29)):
        WebhookEvent.create(stripe_event_id=event_id, event_type="invoice.paid", status="deferred")
        DeferredEvent.create(
            stripe_event_id=event_id,
            stripe_subscription_id="sub_x",
            event_type="invoice.paid",
            created=now - age_days * 86_400,
            payload='{"id": "%s"}' % event_id,
        )
    result = invoke({"REDIS_URL": redis_url, "DATABASE_URL": database_url}, "sweep")
    assert result.exit_code == 0, result.output
    assert "dropped 1 deferred events older than 30 days: evt_old" in result.output
    assert [row.stripe_event_id for row in DeferredEvent.select()] == ["evt_young"]
    assert WebhookEvent.get(WebhookEvent.stripe_event_id == "evt_old").status == "ignored"
    [audit] = AuditLog.select().where(AuditLog.event_type == "deferred_dropped")
    assert json.loads(audit.event_data)["payload"] == '{"id": "evt_old"}'


def test_sweep_command_still_ends_grace_with_redis_unreachable(db, database_url):
    """The write is what matters; no cached answer outlives its grace_until, so a missed cache drop is harmless."""
    row("over", grace_until=utcnow() - SECOND)
    result = invoke({"REDIS_URL": "redis://127.0.0.1:1/0", "DATABASE_URL": database_url}, "sweep")
    assert result.exit_code == 0 and "grace period ended for 1 communities: over" in result.output
    assert status_of("over") == "unpaid"


def test_a_running_consumer_sweeps_by_itself(db, r, redis_url, database_url, tmp_path):
    row("over", grace_until=utcnow() - SECOND, tier="elite")
    row("later", grace_until=utcnow() + dt.timedelta(hours=1))
    cache(r, "over", "later")
    env = service_env(redis_url, database_url, CLAIM_IDLE_MS="400")
    worker = Process(["consumer", "run", "--name", "s1", "--block-ms", "100"], env, str(tmp_path))
    try:
        wait_for(lambda: status_of("over") == "unpaid", what=f"the consumer's sweep: {worker.output()[-2000:]}")
        assert r.exists(KEYS.entitlement_answer("over")) == 0
        assert r.get(KEYS.sweep_lock) == b"s1"
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()
    assert status_of("later") == "past_due" and r.exists(KEYS.entitlement_answer("later")) == 1
    assert [(c, d["tier"]) for c, d in ended_audits()] == [("over", "elite")]
    assert "grace period ended for 1 communities: over" in worker.output()
