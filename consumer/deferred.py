"""Events that arrive before their community is known.

Many integrations put `community_id` only on the checkout session, and Stripe may deliver the new
subscription's `customer.subscription.*` and `invoice.*` events before the checkout. Such an event is kept
here (`deferred`), acknowledged, and applied in `created` order inside the transaction of whichever event
links its subscription to a community; one older than MAX_AGE is dropped with an audit row.

On PostgreSQL two consumers could otherwise miss each other (one defers while the other links, neither
seeing the other's uncommitted row): both take a transaction-scoped advisory lock on the subscription id
first, so whichever comes second sees what the first committed."""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any, Callable

import peewee

from models.db import OUTAGE_ERRORS, is_postgres, write_transaction
from models.tables import AuditLog, DeferredEvent, WebhookEvent, utcnow

log = logging.getLogger(__name__)
MAX_AGE = dt.timedelta(days=30)


def lock_subscription(db: peewee.Database, subscription_id: str) -> None:
    """Serialise deferring and linking of one subscription across consumers (PostgreSQL; SQLite's write
    transactions are serial already)."""
    if is_postgres(db):
        # Advisory locks are database-wide: the schema in the key keeps two deployments (or test runs) that
        # share a database in separate schemas from waiting on each other.
        db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(current_schema() || %s))",
                       (f":billing:subscription:{subscription_id}",))


def defer(event_id: str, event_type: str, subscription_id: str, created: int, payload: bytes) -> None:
    DeferredEvent.insert(stripe_event_id=event_id, stripe_subscription_id=subscription_id, event_type=event_type[:255],
                         created=created, payload=payload.decode("utf-8", "replace")).on_conflict_ignore().execute()


def apply_deferred(db: peewee.Database, subscription_id: str, apply: Callable[[dict[str, Any]], Any]) -> list[str]:
    """Apply the events waiting for `subscription_id`, oldest first, each in its own savepoint; `apply`
    returns a handlers.Result. Returns the event ids applied. An event that fails now is recorded `failed`
    with its error and an audit row (it has no stream entry left to retry)."""
    lock_subscription(db, subscription_id)
    waiting = list(DeferredEvent.select()
                   .where(DeferredEvent.stripe_subscription_id == subscription_id)
                   .order_by(DeferredEvent.created, DeferredEvent.id))
    applied = []
    for row in waiting:
        try:
            with db.atomic():
                result = apply(json.loads(row.payload))
                if result.outcome == "deferred":  # cannot happen once linked; keep it rather than lose it
                    continue
                _record(row.stripe_event_id, result.outcome, community_id=result.community_id)
                row.delete_instance()
            applied.append(row.stripe_event_id)
            log.info("deferred event %s (%s) applied: %s", row.stripe_event_id, row.event_type, result.outcome,
                     extra={"event_id": row.stripe_event_id, "event_type": row.event_type,
                            "outcome": result.outcome, "community_id": result.community_id})
        except OUTAGE_ERRORS:
            raise
        except Exception as exc:
            log.exception("deferred event %s (%s) failed", row.stripe_event_id, row.event_type)
            with db.atomic():
                _record(row.stripe_event_id, "failed", error=f"{type(exc).__name__}: {exc}"[:4000])
                AuditLog.create(event_type="deferred_failed", community_id=None, event_data=json.dumps(
                    {"stripe_event_id": row.stripe_event_id, "stripe_event_type": row.event_type,
                     "subscription_id": subscription_id, "error": f"{type(exc).__name__}: {exc}"[:1000]},
                    sort_keys=True))
                row.delete_instance()
    return applied


def drop_expired(db: peewee.Database, now: dt.datetime | None = None) -> list[str]:
    """Drop deferred events whose `created` is older than MAX_AGE, each with an audit row (its payload
    kept there); their webhook_events rows become `ignored`. Returns their event ids."""
    cutoff = int(((now or utcnow()) - MAX_AGE).replace(tzinfo=dt.timezone.utc).timestamp())
    with write_transaction(db):
        expired = list(DeferredEvent.select().where(DeferredEvent.created < cutoff))
        for row in expired:
            AuditLog.create(event_type="deferred_dropped", community_id=None, event_data=json.dumps(
                {"stripe_event_id": row.stripe_event_id, "stripe_event_type": row.event_type,
                 "subscription_id": row.stripe_subscription_id, "created": row.created,
                 "reason": f"no checkout linked its subscription within {MAX_AGE.days} days",
                 "payload": row.payload}, sort_keys=True))
            _record(row.stripe_event_id, "ignored", error=f"deferred over {MAX_AGE.days} days: dropped")
        if expired:
            DeferredEvent.delete().where(DeferredEvent.id.in_([row.id for row in expired])).execute()
    return [row.stripe_event_id for row in expired]


def _record(event_id: str, status: str, *, community_id: str | None = None, error: str | None = None) -> None:
    (WebhookEvent.update(status=status, community_id=community_id, error_message=error, processed_at=utcnow())
     .where(WebhookEvent.stripe_event_id == event_id).execute())

