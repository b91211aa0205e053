"""Ending expired grace periods: `past_due` past `grace_until` becomes `unpaid`. The entitlements
answer is already right at read time; this writes it down, audits it and drops the cached answer.
Running consumers do it every SWEEP_EVERY_SECONDS, one at a time (a Redis lock), and drop the deferred events
no checkout has claimed within deferred.MAX_AGE on the same pass."""

from __future__ import annotations

import datetime as dt
import json
import logging

import peewee
import redis

from billing.clock import iso, utcnow
from billing.keys import Keys
from billing.redis_io import invalidate_entitlements
from billing.vocabulary import Status
from consumer import deferred
from consumer.interval_lock import IntervalLock
from models.db import is_postgres, write_transaction
from models.tables import AuditLog, Subscription

log = logging.getLogger(__name__)
SWEEP_EVERY_SECONDS = 30


def end_expired_grace(
    db: peewee.Database, client: redis.Redis | None, keys: Keys, now: dt.datetime | None = None
) -> list[str]:
    """Write `unpaid` for every subscription whose grace has ended, and drop their cached entitlements (with
    a client); returns their communities."""
    now = now or utcnow()
    with write_transaction(db):
        query = Subscription.select().where(
            (Subscription.status == Status.PAST_DUE) & (Subscription.grace_until <= now)
        )
        if is_postgres(db):
            query = query.for_update()
        ended = list(query)
        for sub in ended:
            AuditLog.create(
                event_type="grace_period_ended",
                community_id=sub.community_id,
                event_data=json.dumps({"grace_until": iso(sub.grace_until), "tier": sub.tier}),
            )
            sub.status, sub.updated_at = Status.UNPAID, utcnow()
            sub.save()
    if ended and client is not None:
        pipe = client.pipeline(transaction=False)  # not a MULTI: a full Redis refuses to queue anything in one
        for sub in ended:
            invalidate_entitlements(pipe, keys, sub.community_id)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # harmless: no cached answer outlives its grace_until
            log.warning("grace ended for %d communities, cache not dropped: %s", len(ended), exc)
    return [sub.community_id for sub in ended]


def sweep_if_ours(db: peewee.Database, client: redis.Redis, keys: Keys, owner: str) -> list[str] | None:
    """Sweep unless another consumer swept within the interval (None then)."""
    if not IntervalLock(client, keys.sweep_lock, SWEEP_EVERY_SECONDS * 1000).take(owner):
        return None
    ended = end_expired_grace(db, client, keys)
    dropped = deferred.drop_expired(db)
    if dropped:
        log.warning(
            "dropped %d deferred events no checkout linked within %d days (audit rows keep them): %s",
            len(dropped),
            deferred.MAX_AGE.days,
            ", ".join(dropped[:20]),
        )
    return ended
