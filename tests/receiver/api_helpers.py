"""The /v1 API through the Flask test client: its answers, rows to answer from, and events run through the
consumer's own steps."""

from __future__ import annotations

import json

from billing.event_queue import EventQueue
from consumer.batch import apply_batch, settlement_of
from consumer.handlers import Policy
from consumer.stream import EventStream
from models.tables import Subscription

V1 = "/v1/communities"
ENTITLEMENT_FIELDS = {
    "community_id",
    "tier",
    "status",
    "max_members",
    "features",
    "in_grace_period",
    "grace_until",
    "source",
}


def ents(client, community_id="c1", **headers) -> dict:
    response = client.get(f"{V1}/{community_id}/entitlements", headers=headers)
    assert response.status_code == 200 and response.is_json, response.data
    assert set(response.get_json()) == ENTITLEMENT_FIELDS
    return response.get_json()


def row(community_id="c1", tier="premium", status="active", **fields) -> Subscription:
    return Subscription.create(community_id=community_id, tier=tier, status=status, **fields)


def consume(settings, db, r, *events) -> None:
    """Queue the events and run them through the consumer's own steps: read, apply_batch, settle (XACK)."""
    queue = EventQueue(r, settings.keys, settings.dedupe_ttl_seconds)
    for event in events:
        queue.enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())
    stream = EventStream(r, settings, "t1")
    stream.ensure_group()
    entries = stream.read_new(100, 100)
    assert len(entries) == len(events)
    prior = stream.prior_state(entries)
    outcomes = apply_batch(db, entries, prior, Policy.from_settings(settings), settings.max_deliveries)
    assert [o.outcome for o in outcomes] == ["processed"] * len(events)
    stream.settle(settlement_of(outcomes, prior))
    assert r.xpending(settings.keys.stream, settings.consumer_group)["pending"] == 0
