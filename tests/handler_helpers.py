"""Applying events through consumer.batch.apply_batch in tests: realistic events for community c1 (both
API shapes, via `ev`), one batch per call, and what the database then holds."""

import json
import time

from billing.stripe_events import event_created
from billing.tiers import TierMatrix
from consumer.batch import apply_batch
from consumer.entries import Entry, PriorState
from consumer.handlers import Policy
from models.tables import AuditLog, Subscription, WebhookEvent
from receiver.sample_events import build_event

TIERS = TierMatrix.default().names

DAY = 86_400
T0 = 1_760_000_000
P_START, P_END = T0 + DAY, T0 + 31 * DAY
POLICY = Policy(grace_period_seconds=24 * 3600, price_tiers={"price_elite": "elite", "price_basic": "basic"})


def run_batch(db, entries, already=()):
    return apply_batch(db, entries, PriorState(processed_event_ids=frozenset(already)), POLICY, max_deliveries=5)


def entry_for(event, payload=None):
    ms = int(time.time() * 1000)
    return Entry(
        entry_id=f"{ms}-0",
        event_id=event["id"],
        event_type=event["type"],
        created=event_created(event),
        payload=payload if payload is not None else json.dumps(event).encode(),
        received_at_ms=ms,
    )


def ev(event_type, api, community_id="c1", **kw):
    kw = {
        "created": T0,
        "customer_id": "cus_1",
        "subscription_id": "sub_1",
        "price_id": "price_1",
        "period_start": P_START,
        "period_end": P_END,
        "tier": "premium",
        **kw,
    }
    return build_event(event_type, community_id, api_version=api, **kw)


def apply(db, *events, already=()):
    """Apply the events (or entries) as one batch; the outcome names, in order."""
    entries = [e if isinstance(e, Entry) else entry_for(e) for e in events]
    outcomes = run_batch(db, entries, already)
    assert not db.in_transaction()  # committed
    return [o.outcome for o in outcomes]


def row(community_id="c1"):
    return Subscription.get_or_none(Subscription.community_id == community_id)


def snapshot(community_id="c1"):
    return Subscription.select().where(Subscription.community_id == community_id).dicts().get()


def audits(kind=None, community_id="c1"):
    query = AuditLog.select().where(AuditLog.community_id == community_id).order_by(AuditLog.id)
    return [(a.event_type, json.loads(a.event_data)) for a in query if kind in (None, a.event_type)]


def webhook(event):
    [hook] = WebhookEvent.select().where(WebhookEvent.stripe_event_id == event["id"])
    return hook


def checkout(db, api, created=T0, tier="basic", **kw):
    assert apply(db, ev("checkout.session.completed", api, created=created, tier=tier, **kw)) == ["processed"]


def past_due(db, api, created=T0):
    assert apply(db, ev("invoice.payment_failed", api, created=created)) == ["processed"]
    assert row().status == "past_due" and row().grace_until is not None
