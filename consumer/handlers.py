"""What each Stripe event does to a community's subscription: pure functions, no database, no Redis, no
Stripe API. `read` turns an event into its facts (or "not ours"); `apply_facts` takes those facts and the
community's current subscription state and returns the new state, the audit records and the outcome. The batch
(consumer/batch.py) loads the states and writes the results. The rules are the Domain section of CONTRACT.md,
and the README's event-rules table says them in a user's words.

Stripe delivers late, twice and out of order, so before any handler runs `apply_facts` decides whether the
event is about the community's current subscription, and not older than what that subscription has already
had (staleness is judged per Stripe subscription, never across two)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, cast

from billing import community
from billing.clock import from_epoch, iso, utcnow
from billing.stripe_events import BillingFacts, read_facts
from billing.tiers import TierMatrix
from billing.vocabulary import ENDED_STATUSES, HANDLED_TYPES, PAID_STATUSES, EventStatus, EventType, Status

if TYPE_CHECKING:  # for the annotation only: handlers import nothing that speaks Redis
    from billing.config import Settings

# Stripe subscription statuses we do not keep as such.
STATUS_MAP = {"incomplete": Status.UNPAID, "incomplete_expired": Status.UNPAID, "paused": Status.UNPAID}
DEFAULT_TIER = "basic"  # of a subscription we have never seen, when neither price nor metadata says
PAID_CHECKOUT = ("paid", "no_payment_required")


@dataclasses.dataclass
class SubState:
    """One community's row of `subscriptions`, in memory: what handlers read and return."""

    community_id: str
    tier: str | None = None
    status: str | None = None  # a Status (a plain str as loaded from the table)
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    grace_until: dt.datetime | None = None
    current_period_start: dt.datetime | None = None
    current_period_end: dt.datetime | None = None
    last_event_created: int = 0
    last_paid_invoice_id: str | None = None
    created_at: dt.datetime | None = None  # None: not in the table yet
    updated_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    kind: str
    community_id: str | None
    data: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Policy:
    """The settings handlers need."""

    grace_period_seconds: int
    price_tiers: Mapping[str, str]
    tiers: TierMatrix = dataclasses.field(default_factory=TierMatrix.default)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Policy":
        return cls(settings.grace_period_seconds, settings.price_tiers, settings.tiers)


@dataclasses.dataclass(frozen=True)
class Result:
    outcome: EventStatus  # processed, ignored, stale or deferred
    community_id: str | None = None  # set when the community's subscription changed
    reason: str | None = None  # why ignored, stale or deferred, for the log
    subscription_id: str | None = None  # deferred: the subscription it waits for
    linked_subscription_id: str | None = None  # processed: a subscription this event newly linked
    state: SubState | None = None  # the subscription's new state, when it changed (processed, or stale news)
    audits: tuple[AuditRecord, ...] = ()


def read(event: dict[str, Any]) -> BillingFacts | Result:
    """The event's facts, or an `ignored` Result when it is not ours. Raises (a ValueError) on an event we
    cannot read: its payload is not its type's object, or its community_id breaks the community-id rule."""
    if event["type"] not in HANDLED_TYPES:
        return Result(EventStatus.IGNORED, reason="event type not handled")
    facts = read_facts(event)
    if facts.community_id is not None:
        community.check(facts.community_id)
    if facts.event_type.startswith("checkout.") and facts.mode != "subscription":
        return Result(EventStatus.IGNORED, reason=f"checkout session in {facts.mode} mode")
    if facts.event_type.startswith("invoice.") and not facts.subscription_id:
        return Result(EventStatus.IGNORED, reason="one-off invoice: bills no subscription")
    return facts


def lookup_key(facts: BillingFacts) -> tuple[str, str] | None:
    """Where the event's subscription state is found: ("community", id) when the event names its community,
    else ("subscription", the Stripe subscription id), else nowhere."""
    if facts.community_id:
        return "community", facts.community_id
    if facts.subscription_id:
        return "subscription", facts.subscription_id
    return None


def apply_event(event: dict[str, Any], sub: SubState | None, policy: Policy) -> Result:
    """`read`, then `apply_facts`: for callers holding the state already (drift's comparison)."""
    facts = read(event)
    return facts if isinstance(facts, Result) else apply_facts(facts, sub, policy)


def apply_facts(facts: BillingFacts, current: SubState | None, policy: Policy) -> Result:
    """The outcome of one event for the community's current state (None: no row). Never changes `current`:
    a changed state is a new object in the Result."""
    audits: list[AuditRecord] = []
    sub = dataclasses.replace(current) if current is not None else None
    result = _decide(facts, sub, policy, audits)
    return dataclasses.replace(result, audits=tuple(audits))


def _decide(facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]) -> Result:
    if sub is None and not facts.community_id:
        if facts.subscription_id and not facts.event_type.startswith("checkout."):
            return Result(
                EventStatus.DEFERRED,
                reason="no community yet: waits for the checkout that links its subscription",
                subscription_id=facts.subscription_id,
            )
        return Result(EventStatus.IGNORED, reason="no community_id in metadata and no known subscription")
    if sub is not None and _about_another_subscription(facts, sub):
        return Result(EventStatus.IGNORED, reason="about a subscription the community no longer has")
    if sub is not None and _same_subscription(facts, sub) and facts.created < sub.last_event_created:
        changed = _merge_lasting_facts(sub, facts)
        return Result(
            EventStatus.STALE,
            reason="older than the last event applied to this subscription",
            state=sub if changed else None,
        )
    if sub is not None and facts.event_type == EventType.INVOICE_PAYMENT_FAILED and _already_paid(facts, sub):
        return Result(EventStatus.STALE, reason="a failed attempt of an invoice already paid")
    linked = (
        facts.subscription_id
        if facts.subscription_id and (sub is None or sub.stripe_subscription_id != facts.subscription_id)
        else None
    )
    sub = HANDLERS[facts.event_type](facts, sub, policy, audits)
    return Result(EventStatus.PROCESSED, sub.community_id, linked_subscription_id=linked, state=sub)


def _same_subscription(facts: BillingFacts, sub: SubState) -> bool:
    return (
        not (facts.subscription_id and sub.stripe_subscription_id)
        or facts.subscription_id == sub.stripe_subscription_id
    )


def _about_another_subscription(facts: BillingFacts, sub: SubState) -> bool:
    """An old subscription's events never touch the community's current one. A checkout of another
    subscription starts a new current one, unless it is older than what the current one has had while that
    one is live (a late checkout of the subscription it replaced). Once the current one has ended, a live
    subscription's events take over; a deletion only ever ends the subscription it names."""
    if _same_subscription(facts, sub):
        return False
    if facts.event_type.startswith("checkout."):
        return sub.status not in ENDED_STATUSES and facts.created < sub.last_event_created
    return sub.status not in ENDED_STATUSES or facts.event_type == EventType.SUBSCRIPTION_DELETED


def _already_paid(facts: BillingFacts, sub: SubState) -> bool:
    """Stripe stops retrying an invoice once paid: its failure, delivered after (or in the same second as)
    the payment, is the older news."""
    return (
        _same_subscription(facts, sub) and facts.object_id is not None and sub.last_paid_invoice_id == facts.object_id
    )


def checkout_completed(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    sub, seen = _current(sub, facts)
    sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    if facts.payment_status in PAID_CHECKOUT or facts.payment_status is None:  # None: sessions before 2019
        status = Status.TRIALING if facts.status == Status.TRIALING else Status.ACTIVE
        _mark_paid(sub, facts.invoice_id or facts.object_id)
        _save(sub, facts, status=status, grace_until=None)
    else:  # unpaid: a bank debit not settled yet. Linked now, granted by async_payment_succeeded or invoice.paid
        _save(sub, facts, status=sub.status if seen and sub.status else Status.UNPAID, grace_until=sub.grace_until)
    _audit(
        audits,
        "subscription_created",
        sub,
        facts,
        tier=sub.tier,
        subscription_id=sub.stripe_subscription_id,
        payment_status=facts.payment_status,
        status=sub.status,
    )
    return sub


def checkout_payment_succeeded(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    sub, seen = _current(sub, facts)
    sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    _mark_paid(sub, facts.invoice_id or facts.object_id)
    _save(sub, facts, status=Status.ACTIVE, grace_until=None)
    _audit(
        audits,
        "payment_succeeded",
        sub,
        facts,
        checkout_session_id=facts.object_id,
        invoice_id=facts.invoice_id,
        amount=facts.amount,
        currency=facts.currency,
    )
    return sub


def checkout_payment_failed(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    """The bank debit of a checkout failed: nothing is granted (nor taken from a subscription already paid)."""
    sub, seen = _current(sub, facts)
    if not seen:
        sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    status = sub.status if seen and sub.status and sub.last_paid_invoice_id else Status.UNPAID
    _save(sub, facts, status=status, grace_until=sub.grace_until)
    _audit(
        audits,
        "payment_failed",
        sub,
        facts,
        checkout_session_id=facts.object_id,
        invoice_id=facts.invoice_id,
        status=sub.status,
    )
    return sub


def invoice_paid(facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]) -> SubState:
    sub, seen = _current(sub, facts)
    sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    _mark_paid(sub, facts.object_id)
    if seen and sub.status == Status.CANCELED:
        status, grace = sub.status, sub.grace_until  # a late payment of an ended subscription does not revive it
    elif seen and sub.status == Status.TRIALING and not facts.amount:
        status, grace = Status.TRIALING, None  # the $0 invoice that starts a trial does not end it
    else:
        status, grace = Status.ACTIVE, None
    _save(sub, facts, status=status, grace_until=grace)
    _audit(
        audits,
        "payment_succeeded",
        sub,
        facts,
        invoice_id=facts.object_id,
        amount=facts.amount,
        currency=facts.currency,
    )
    return sub


def invoice_payment_failed(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    sub, seen = _current(sub, facts)
    sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    never_paid = facts.billing_reason == "subscription_create" and not (seen and sub.last_paid_invoice_id)
    grace_started = False
    status: str
    if never_paid:  # as Stripe's `incomplete`: nothing was ever paid, so no grace
        status, grace = (
            (Status.CANCELED, sub.grace_until) if seen and sub.status == Status.CANCELED else (Status.UNPAID, None)
        )
    elif not seen or sub.status in PAID_STATUSES or (sub.status == Status.PAST_DUE and sub.grace_until is None):
        status, grace, grace_started = Status.PAST_DUE, _grace_end(facts, policy), True
    else:  # already past due (grace runs from the first failure), ended, or unpaid: keep it so
        status, grace = cast(str, sub.status), sub.grace_until  # seen: a stored row, which has a status
    _save(sub, facts, status=status, grace_until=grace)
    _audit(
        audits,
        "payment_failed",
        sub,
        facts,
        invoice_id=facts.object_id,
        attempt_count=facts.attempt_count,
        billing_reason=facts.billing_reason,
        grace_until=iso(sub.grace_until),
    )
    if grace_started:
        _audit(audits, "grace_period_started", sub, facts, grace_until=iso(sub.grace_until))
    return sub


def subscription_updated(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    previous = {"tier": sub.tier, "status": sub.status} if sub else {"tier": None, "status": None}
    sub, seen = _current(sub, facts)
    status: str | None = STATUS_MAP.get(facts.status or "") or Status.lookup(facts.status)
    if status is None:
        status = sub.status or Status.UNPAID  # a status Stripe may add later: keep ours rather than guess
    sub.tier = _resolve_tier(facts, sub, policy, seen, audits)
    grace_until = sub.grace_until
    if status in PAID_STATUSES:
        grace_until = None
    elif status == Status.PAST_DUE and grace_until is None:
        grace_until = _grace_end(facts, policy)
        _audit(audits, "grace_period_started", sub, facts, grace_until=iso(grace_until))
    _save(sub, facts, status=status, grace_until=grace_until)
    _audit(
        audits,
        "subscription_updated",
        sub,
        facts,
        tier=sub.tier,
        status=sub.status,
        previous=previous,
        stripe_status=facts.status,
    )
    return sub


def subscription_deleted(
    facts: BillingFacts, sub: SubState | None, policy: Policy, audits: list[AuditRecord]
) -> SubState:
    sub, _seen = _current(sub, facts)
    sub.tier = policy.tiers.free.name
    _save(sub, facts, status=Status.CANCELED, grace_until=None)
    _audit(audits, "subscription_canceled", sub, facts)
    return sub


HANDLERS: dict[str, Callable[[BillingFacts, SubState | None, Policy, list[AuditRecord]], SubState]] = {
    EventType.CHECKOUT_COMPLETED: checkout_completed,
    EventType.CHECKOUT_ASYNC_PAYMENT_SUCCEEDED: checkout_payment_succeeded,
    EventType.CHECKOUT_ASYNC_PAYMENT_FAILED: checkout_payment_failed,
    EventType.INVOICE_PAID: invoice_paid,
    EventType.INVOICE_PAYMENT_FAILED: invoice_payment_failed,
    EventType.SUBSCRIPTION_UPDATED: subscription_updated,
    EventType.SUBSCRIPTION_DELETED: subscription_deleted,
}


def _current(sub: SubState | None, facts: BillingFacts) -> tuple[SubState, bool]:
    """The row this event writes, and whether it already holds this event's subscription ("seen"). A
    subscription new to the community starts afresh: its own order, period and payments."""
    if sub is None:
        # _decide returned already for an event with neither a state nor a community_id
        return SubState(community_id=cast(str, facts.community_id)), False
    if _same_subscription(facts, sub) and sub.stripe_subscription_id:
        return sub, True
    if facts.subscription_id and facts.subscription_id != sub.stripe_subscription_id:
        sub.last_event_created = 0
        sub.current_period_start = sub.current_period_end = None
        sub.last_paid_invoice_id = None
        sub.grace_until = None
    return sub, sub.stripe_subscription_id is None and sub.tier is not None


def _resolve_tier(facts: BillingFacts, sub: SubState, policy: Policy, seen: bool, audits: list[AuditRecord]) -> str:
    """The price's tier (a plan change in the customer portal changes the price, not the metadata); else
    the metadata tier if it is one of ours; else the tier this subscription already has; DEFAULT_TIER only
    for a subscription we have never seen. A metadata tier we do not know never grants anything."""
    for price_id in facts.price_ids:
        if price_id in policy.price_tiers:
            return policy.price_tiers[price_id]
    if facts.tier in policy.tiers:
        return cast(str, facts.tier)  # None is in no tier matrix
    known = sub.tier if seen and sub.tier in policy.tiers else None
    if facts.tier is None:
        if known:
            return known
        if DEFAULT_TIER in policy.tiers:
            return DEFAULT_TIER
    kept = known or policy.tiers.free.name
    reason = (
        "metadata tier is not in the tier matrix"
        if facts.tier is not None
        else f"no tier in metadata and the default {DEFAULT_TIER!r} is not in the tier matrix"
    )
    _audit(
        audits,
        "tier_unresolved",
        sub,
        facts,
        metadata_tier=facts.tier,
        price_ids=list(facts.price_ids),
        kept_tier=kept,
        reason=f"{reason}, and no price maps to a tier in STRIPE_PRICE_TIERS",
    )
    return kept


def _grace_end(facts: BillingFacts, policy: Policy) -> dt.datetime:
    # from_epoch of a number is a datetime (billing/clock.py has no overload saying so)
    return from_epoch(facts.created + policy.grace_period_seconds)


def _mark_paid(sub: SubState, invoice_id: str | None) -> None:
    sub.last_paid_invoice_id = invoice_id or sub.last_paid_invoice_id


def _merge_lasting_facts(sub: SubState, facts: BillingFacts) -> bool:
    """What a stale event still tells: a later billing period (periods only move forward, whatever the
    order), and that an invoice was paid. Nothing else of it applies. True if `sub` changed."""
    changed = _advance_period(sub, facts)
    if facts.event_type == EventType.INVOICE_PAID and not sub.last_paid_invoice_id and facts.object_id:
        sub.last_paid_invoice_id = facts.object_id
        changed = True
    if changed:
        sub.updated_at = utcnow()
    return changed


def _advance_period(sub: SubState, facts: BillingFacts) -> bool:
    if facts.period_start is None or facts.period_end is None:
        return False
    end = from_epoch(facts.period_end)
    if sub.current_period_end is not None and end <= sub.current_period_end:
        return False
    sub.current_period_start, sub.current_period_end = from_epoch(facts.period_start), end
    return True


def _save(sub: SubState, facts: BillingFacts, *, status: str, grace_until: dt.datetime | None) -> None:
    sub.status = status
    sub.grace_until = grace_until
    sub.stripe_customer_id = facts.customer_id or sub.stripe_customer_id
    sub.stripe_subscription_id = facts.subscription_id or sub.stripe_subscription_id
    _advance_period(sub, facts)
    sub.last_event_created = max(sub.last_event_created or 0, facts.created)
    sub.updated_at = utcnow()


def _audit(audits: list[AuditRecord], kind: str, sub: SubState, facts: BillingFacts, **details: Any) -> None:
    audits.append(
        AuditRecord(
            kind,
            sub.community_id,
            {"stripe_event_id": facts.event_id, "stripe_event_type": facts.event_type, **details},
        )
    )
