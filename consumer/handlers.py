"""What each Stripe event does to a community's subscription. Plain functions over the database:
no Redis, no Stripe API calls. `apply_event` is the one entry point."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Callable

from models.db import database_proxy, is_postgres
from models.stripe_events import HANDLED_TYPES, BillingFacts, read_facts
from models.tables import AuditLog, Subscription, from_epoch, iso, utcnow
from models.tiers import TierMatrix

# Stripe subscription statuses we do not keep as such.
STATUS_MAP = {"incomplete": "unpaid", "incomplete_expired": "unpaid", "paused": "unpaid"}
KEPT_STATUSES = ("active", "past_due", "canceled", "trialing", "unpaid")
DEFAULT_CHECKOUT_TIER = "basic"


@dataclasses.dataclass(frozen=True)
class Policy:
    """The settings handlers need."""

    grace_period_seconds: int
    price_tiers: Mapping[str, str]
    tiers: TierMatrix = dataclasses.field(default_factory=TierMatrix.default)

    @classmethod
    def from_settings(cls, settings) -> "Policy":
        return cls(settings.grace_period_seconds, settings.price_tiers, settings.tiers)


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: str  # processed, ignored or stale
    community_id: str | None = None  # set when the community's subscription changed
    reason: str | None = None  # why ignored or stale, for the log


def apply_event(event: dict[str, Any], policy: Policy) -> Result:
    """Apply one event inside the caller's transaction. Raises on an event we cannot read."""
    if event["type"] not in HANDLED_TYPES:
        return Result("ignored", reason="event type not handled")
    facts = read_facts(event)
    if facts.event_type == "checkout.session.completed":
        mode = (event["data"]["object"].get("mode") or "subscription")
        if mode != "subscription":
            return Result("ignored", reason=f"checkout session in {mode} mode")
    if facts.event_type.startswith("invoice.") and not facts.subscription_id:
        return Result("ignored", reason="one-off invoice: bills no subscription")
    sub = _find_subscription(facts)
    if sub is None and not facts.community_id:
        return Result("ignored", reason="no community_id in metadata and no known subscription")
    if sub is not None and _about_another_subscription(facts, sub):
        return Result("ignored", reason="about a subscription the community no longer has")
    if sub is not None and facts.created < sub.last_event_created:
        return Result("stale", sub.community_id, reason="older than the last event applied")
    HANDLERS[facts.event_type](facts, sub, policy)
    return Result("processed", sub.community_id if sub else facts.community_id)


def _find_subscription(facts: BillingFacts) -> Subscription | None:
    """The community's subscription row, locked on PostgreSQL so two consumers never interleave on it."""
    query = Subscription.select()
    if facts.community_id:
        query = query.where(Subscription.community_id == facts.community_id)
    elif facts.subscription_id:
        query = query.where(Subscription.stripe_subscription_id == facts.subscription_id)
    else:
        return None
    if is_postgres(database_proxy.obj):
        query = query.for_update()
    return query.first()


def _about_another_subscription(facts: BillingFacts, sub: Subscription) -> bool:
    """An event of an old subscription must not touch the community's current one (a checkout always
    starts the current one). Once the current one is canceled, a live subscription's events take over;
    a deletion only ever ends the subscription it names."""
    if facts.event_type == "checkout.session.completed" or not (facts.subscription_id and sub.stripe_subscription_id):
        return False
    if facts.subscription_id == sub.stripe_subscription_id:
        return False
    return sub.status != "canceled" or facts.event_type == "customer.subscription.deleted"


def checkout_completed(facts: BillingFacts, sub: Subscription | None, policy: Policy) -> None:
    sub = sub or Subscription(community_id=facts.community_id)
    sub.tier = _resolve_tier(facts, sub, policy, default=DEFAULT_CHECKOUT_TIER)
    _save(sub, facts, status="active", grace_until=None)
    _audit("subscription_created", sub, facts, tier=sub.tier, subscription_id=sub.stripe_subscription_id)


def invoice_paid(facts: BillingFacts, sub: Subscription | None, policy: Policy) -> None:
    sub = sub or _new_subscription(facts, policy)
    ended = sub.status == "canceled" and sub.stripe_subscription_id == facts.subscription_id
    # A late payment of an ended subscription's invoice does not bring the subscription back.
    _save(sub, facts, status=sub.status if ended else "active", grace_until=None if not ended else sub.grace_until)
    _audit("payment_succeeded", sub, facts, invoice_id=facts.object_id, amount=facts.amount, currency=facts.currency)


def invoice_payment_failed(facts: BillingFacts, sub: Subscription | None, policy: Policy) -> None:
    sub = sub or _new_subscription(facts, policy)
    grace_started = sub.status not in ("past_due", "canceled", "unpaid") or (
        sub.status == "past_due" and sub.grace_until is None
    )
    if grace_started:
        _save(sub, facts, status="past_due", grace_until=_grace_end(facts, policy))
    else:  # already past due (grace runs from the first failure), ended, or unpaid: keep it so
        _save(sub, facts, status=sub.status, grace_until=sub.grace_until)
    _audit("payment_failed", sub, facts, invoice_id=facts.object_id, attempt_count=facts.attempt_count,
           grace_until=iso(sub.grace_until))
    if grace_started:
        _audit("grace_period_started", sub, facts, grace_until=iso(sub.grace_until))


def subscription_updated(facts: BillingFacts, sub: Subscription | None, policy: Policy) -> None:
    is_new = sub is None
    sub = sub or _new_subscription(facts, policy)
    previous = {"tier": sub.tier, "status": sub.status}
    status = STATUS_MAP.get(facts.status or "", facts.status)
    if status not in KEPT_STATUSES:
        status = sub.status  # a status Stripe may add later: keep ours rather than guess
    if not is_new:  # a new row's tier is resolved (an unresolved one audited) by _new_subscription
        sub.tier = _resolve_tier(facts, sub, policy, default=sub.tier)
    grace_until = sub.grace_until
    if status == "active":
        grace_until = None
    elif status == "past_due" and grace_until is None:
        grace_until = _grace_end(facts, policy)
        _audit("grace_period_started", sub, facts, grace_until=iso(grace_until))
    _save(sub, facts, status=status, grace_until=grace_until)
    _audit("subscription_updated", sub, facts, tier=sub.tier, status=sub.status, previous=previous,
           stripe_status=facts.status)


def subscription_deleted(facts: BillingFacts, sub: Subscription | None, policy: Policy) -> None:
    sub = sub or Subscription(community_id=facts.community_id)
    sub.tier = policy.tiers.free.name
    _save(sub, facts, status="canceled", grace_until=None)
    _audit("subscription_canceled", sub, facts)


HANDLERS: dict[str, Callable[[BillingFacts, Subscription | None, Policy], None]] = {
    "checkout.session.completed": checkout_completed,
    "invoice.paid": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "customer.subscription.updated": subscription_updated,
    "customer.subscription.deleted": subscription_deleted,
}


def _new_subscription(facts: BillingFacts, policy: Policy) -> Subscription:
    """A community we have no row for yet (Stripe does not promise order: invoice.paid often comes
    before checkout.session.completed)."""
    sub = Subscription(community_id=facts.community_id, status="active", tier=policy.tiers.free.name)
    sub.tier = _resolve_tier(facts, sub, policy, default=DEFAULT_CHECKOUT_TIER)
    return sub


def _resolve_tier(facts: BillingFacts, sub: Subscription, policy: Policy, default: str) -> str:
    """Metadata tier if it is one of ours, else the price's tier from STRIPE_PRICE_TIERS, else `default`.
    A metadata tier we do not know never grants anything: we keep the current tier and say why."""
    if facts.tier in policy.tiers:
        return facts.tier
    for price_id in facts.price_ids:
        if price_id in policy.price_tiers:
            return policy.price_tiers[price_id]
    if facts.tier is None and default in policy.tiers:
        return default
    kept = sub.tier if sub.tier in policy.tiers else policy.tiers.free.name
    reason = ("metadata tier is not in the tier matrix" if facts.tier is not None else
              f"no tier in metadata and the default {default!r} is not in the tier matrix")
    _audit("tier_unresolved", sub, facts, metadata_tier=facts.tier, price_ids=list(facts.price_ids), kept_tier=kept,
           reason=f"{reason}, and no price maps to a tier in STRIPE_PRICE_TIERS")
    return kept


def _grace_end(facts: BillingFacts, policy: Policy) -> dt.datetime:
    return from_epoch(facts.created + policy.grace_period_seconds)


def _save(sub: Subscription, facts: BillingFacts, *, status: str, grace_until: dt.datetime | None) -> None:
    sub.status = status
    sub.grace_until = grace_until
    sub.stripe_customer_id = facts.customer_id or sub.stripe_customer_id
    sub.stripe_subscription_id = facts.subscription_id or sub.stripe_subscription_id
    if facts.period_start is not None and facts.period_end is not None:
        sub.current_period_start = from_epoch(facts.period_start)
        sub.current_period_end = from_epoch(facts.period_end)
    sub.last_event_created = max(sub.last_event_created or 0, facts.created)
    sub.updated_at = utcnow()
    sub.save()


def _audit(kind: str, sub: Subscription, facts: BillingFacts, **details: Any) -> None:
    data = {"stripe_event_id": facts.event_id, "stripe_event_type": facts.event_type, **details}
    AuditLog.create(event_type=kind, community_id=sub.community_id, event_data=json.dumps(data, sort_keys=True))
