"""Drift: where a community's row differs from its subscription as Stripe has it now (tier, status, period),
and, on request, the fix.

Stripe's current subscription is turned into the event Stripe would send for it (`customer.subscription.updated`,
or `.deleted` once canceled; id `evt_reconcile_...`, created now) and applied through the same handler as a
webhook, in a transaction: what the handler would change is the drift. Without --fix, or with nothing to change,
the transaction is rolled back, so the report is exactly what --fix would write. With --fix it commits, with a
`reconciled` audit row saying what differed, and the community's cached entitlements are dropped. A second run
then finds nothing: the row is what Stripe's state makes it."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

import peewee
import redis

from billing.clock import iso
from billing.keys import Keys
from billing.redis_io import invalidate_entitlements
from billing.stripe_events import read_facts
from billing.vocabulary import EventType, Status
from consumer import ops
from consumer.batch import load_subscription, write_result
from consumer.handlers import Policy, SubState, apply_event
from consumer.stripe_api import StripeApi
from models.db import write_transaction
from models.tables import Subscription

COMPARED = ("tier", "status", "current_period_start", "current_period_end")
RECONCILE_EVENT_PREFIX = "evt_reconcile_"


@dataclasses.dataclass
class Drift:
    community_id: str
    subscription_id: str
    differences: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # field -> {ours, stripe}
    fixed: bool = False
    problem: str | None = None  # why it could not be compared

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Rollback(Exception):
    pass


def check_subscriptions(
    api: StripeApi,
    db: peewee.Database,
    client: redis.Redis | None,
    keys: Keys,
    policy: Policy,
    *,
    fix: bool = False,
    communities: Sequence[str] = (),
) -> list[Drift]:
    """One Drift per known community with a Stripe subscription (or those of `communities`)."""
    query = Subscription.select().where(Subscription.stripe_subscription_id.is_null(False))
    if communities:
        query = query.where(Subscription.community_id.in_(list(communities)))
    # Only rows with a subscription id are read (the query above), so the ids are strings.
    rows = [
        (row.community_id, cast(str, row.stripe_subscription_id)) for row in query.order_by(Subscription.community_id)
    ]
    report = []
    for community_id, subscription_id in rows:
        drift = Drift(community_id, subscription_id)
        current = api.subscription(subscription_id)  # outside any transaction: no lock waits on Stripe
        if current is None:
            drift.problem = "Stripe has no such subscription"
        else:
            _compare(db, drift, state_event(current), policy, fix)
        if drift.fixed and client is not None:
            pipe = client.pipeline(transaction=False)
            invalidate_entitlements(pipe, keys, community_id)
            pipe.execute()
        report.append(drift)
    return report


def state_event(subscription: dict[str, Any], now: int | None = None) -> dict[str, Any]:
    """The event Stripe would send for the subscription as it is now."""
    deleted = subscription.get("status") == Status.CANCELED
    event_type = EventType.SUBSCRIPTION_DELETED if deleted else EventType.SUBSCRIPTION_UPDATED
    return {
        "id": f"{RECONCILE_EVENT_PREFIX}{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type.value,
        "created": now or int(time.time()),
        "livemode": subscription.get("livemode", False),
        "data": {"object": subscription},
    }


def _compare(db: peewee.Database, drift: Drift, event: dict[str, Any], policy: Policy, fix: bool) -> None:
    try:
        named = read_facts(event).community_id
    except ValueError as exc:
        drift.problem = f"cannot read Stripe's subscription: {exc}"
        return
    if named and named != drift.community_id:
        drift.problem = f"Stripe's metadata names community {named!r}: not fixed automatically"
        return
    try:
        with write_transaction(db):
            current = load_subscription(db, drift.community_id)
            if current is None or current.stripe_subscription_id != drift.subscription_id:
                drift.problem = "the row changed while we asked Stripe; run again"
                raise _Rollback()
            try:
                result = apply_event(event, current, policy)
            except ValueError as exc:  # an object the handler cannot read
                drift.problem = f"cannot apply Stripe's subscription: {exc}"
                raise _Rollback() from None
            before, after = _compared(current), _compared(result.state or current)
            drift.differences = {
                field: {"ours": before[field], "stripe": after[field]}
                for field in COMPARED
                if before[field] != after[field]
            }
            if not drift.differences or not fix:
                raise _Rollback()
            write_result(db, result)
            ops.audit(
                "reconciled",
                {
                    "stripe_event_id": event["id"],
                    "subscription_id": drift.subscription_id,
                    "differences": drift.differences,
                },
                community_id=drift.community_id,
            )
            drift.fixed = True
    except _Rollback:
        pass


def _compared(state: SubState) -> dict[str, Any]:
    return {
        "tier": state.tier,
        "status": state.status,
        "current_period_start": iso(state.current_period_start),
        "current_period_end": iso(state.current_period_end),
    }


def as_json(report: list[Drift]) -> str:
    return json.dumps([drift.as_dict() for drift in report], indent=2)
