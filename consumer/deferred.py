"""Events that arrive before their community is known.

Many integrations put `community_id` only on the checkout session, and Stripe may deliver the new
subscription's `customer.subscription.*` and `invoice.*` events before the checkout. Such an event is kept
in `deferred_events`, acknowledged, and applied in `created` order inside the transaction of whichever event
links its subscription to a community (consumer/batch.py, which also holds the locks that keep two consumers
from missing each other); one older than MAX_AGE is dropped here, with an audit row."""

from __future__ import annotations

import datetime as dt
import json
import logging

import peewee

from billing.clock import utcnow
from billing.vocabulary import EventStatus
from models.db import write_transaction
from models.tables import AuditLog, DeferredEvent, WebhookEvent

log = logging.getLogger(__name__)
MAX_AGE = dt.timedelta(days=30)


def drop_expired(db: peewee.Database, now: dt.datetime | None = None) -> list[str]:
    """Drop deferred events whose `created` is older than MAX_AGE, each with an audit row (its payload
    kept there); their webhook_events rows become `ignored`. Returns their event ids."""
    cutoff = int(((now or utcnow()) - MAX_AGE).replace(tzinfo=dt.timezone.utc).timestamp())
    with write_transaction(db):
        expired = list(DeferredEvent.select().where(DeferredEvent.created < cutoff))
        for row in expired:
            AuditLog.create(
                event_type="deferred_dropped",
                community_id=None,
                event_data=json.dumps(
                    {
                        "stripe_event_id": row.stripe_event_id,
                        "stripe_event_type": row.event_type,
                        "subscription_id": row.stripe_subscription_id,
                        "created": row.created,
                        "reason": f"no checkout linked its subscription within {MAX_AGE.days} days",
                        "payload": row.payload,
                    },
                    sort_keys=True,
                ),
            )
            _record(row.stripe_event_id, EventStatus.IGNORED, error=f"deferred over {MAX_AGE.days} days: dropped")
        if expired:
            DeferredEvent.delete().where(DeferredEvent.id.in_([row.id for row in expired])).execute()
    return [row.stripe_event_id for row in expired]


def _record(event_id: str, status: EventStatus, *, community_id: str | None = None, error: str | None = None) -> None:
    (
        WebhookEvent.update(status=status, community_id=community_id, error_message=error, processed_at=utcnow())
        .where(WebhookEvent.stripe_event_id == event_id)
        .execute()
    )
