"""What a community may use right now: its effective tier, computed from its subscription row and the
clock, so the answer is right the moment a grace period ends, before anything is written."""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from billing.clock import ISO_FORMAT, iso
from billing.tiers import TierMatrix
from billing.vocabulary import ENDED_STATUSES, Status


class Subscription(Protocol):
    """What these rules read of a subscription row (models.tables.Subscription)."""

    community_id: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    tier: str
    status: str
    grace_until: dt.datetime | None
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    updated_at: dt.datetime


def grace_expired(sub: Subscription, now: dt.datetime) -> bool:
    return sub.status == Status.PAST_DUE and sub.grace_until is not None and now >= sub.grace_until


def entitlements(community_id: str, sub: Subscription | None, tiers: TierMatrix, now: dt.datetime) -> dict[str, Any]:
    """The entitlements answer (without `source`). `now` is naive UTC, like the stored times."""
    status = sub.status if sub else None
    in_grace = bool(sub and sub.status == Status.PAST_DUE and not grace_expired(sub, now))
    if sub is None or status in ENDED_STATUSES or grace_expired(sub, now):
        tier = tiers.free
        if sub is not None and grace_expired(sub, now):
            status = Status.UNPAID  # what the sweep will write; true already
    else:
        tier = tiers.get(sub.tier) or tiers.free  # a tier dropped from TIERS_FILE grants only the free one
    return {
        "community_id": community_id,
        "tier": tier.name,
        "status": status,
        "max_members": tier.max_members,
        "features": list(tier.features),
        "in_grace_period": in_grace,
        "grace_until": iso(sub.grace_until) if sub is not None and in_grace else None,
    }


def cache_ttl(answer: dict[str, Any], ttl_seconds: int, now: dt.datetime) -> int:
    """Seconds to cache an answer: never past the end of its grace period."""
    if answer["grace_until"]:
        grace_until = dt.datetime.strptime(answer["grace_until"], ISO_FORMAT)
        return max(0, min(ttl_seconds, int((grace_until - now).total_seconds())))
    return ttl_seconds


def subscription_view(sub: Subscription) -> dict[str, Any]:
    return {
        "community_id": sub.community_id,
        "tier": sub.tier,
        "status": sub.status,
        "stripe_customer_id": sub.stripe_customer_id,
        "stripe_subscription_id": sub.stripe_subscription_id,
        "grace_until": iso(sub.grace_until),
        "current_period_start": iso(sub.current_period_start),
        "current_period_end": iso(sub.current_period_end),
        "updated_at": iso(sub.updated_at),
    }
