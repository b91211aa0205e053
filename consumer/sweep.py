"""Ending expired grace periods: `past_due` past `grace_until` becomes `unpaid`. The entitlements
answer is already right at read time; this writes it down, audits it and drops the cached answer.
Running consumers do it every SWEEP_EVERY_SECONDS, one at a time (a Redis lock)."""
from __future__ import annotations

import datetime as dt
import json

import peewee
import redis

from models.db import is_postgres, write_transaction
from models.entitlements import iso
from models.redis_io import invalidate_entitlements
from models.tables import AuditLog, Subscription, utcnow

SWEEP_EVERY_SECONDS = 30
LOCK_KEY = "billing:sweep:lock"


def end_expired_grace(db: peewee.Database, client: redis.Redis | None, now: dt.datetime | None = None) -> list[str]:
    """Write `unpaid` for every subscription whose grace has ended; returns their communities."""
    now = now or utcnow()
    with write_transaction(db):
        query = Subscription.select().where((Subscription.status == "past_due") & (Subscription.grace_until <= now))
        if is_postgres(db):
            query = query.for_update()
        ended = list(query)
        for sub in ended:
            AuditLog.create(event_type="grace_period_ended", community_id=sub.community_id,
                            event_data=json.dumps({"grace_until": iso(sub.grace_until), "tier": sub.tier}))
            sub.status, sub.updated_at = "unpaid", utcnow()
            sub.save()
    if ended and client is not None:
        pipe = client.pipeline(transaction=True)
        for sub in ended:
            invalidate_entitlements(pipe, sub.community_id)
        pipe.execute()
    return [sub.community_id for sub in ended]


def sweep_if_ours(db: peewee.Database, client: redis.Redis, owner: str) -> list[str] | None:
    """Sweep unless another consumer swept within the interval (None then): the lock is kept for the
    whole interval, so all consumers together sweep once per interval, and a crash frees it in time."""
    if not client.set(LOCK_KEY, owner, nx=True, px=SWEEP_EVERY_SECONDS * 1000):
        return None
    return end_expired_grace(db, client)
