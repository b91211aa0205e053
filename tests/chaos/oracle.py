"""The oracle: a deliberately simple model of what the pipeline must end with, written from the contract's
rules and not from our code. Stories are built so that the newest event decides everything but the period
(see stories.py), so the model is a table lookup on that event, and the period is the latest one any event of
the subscription carried (periods only move forward, whatever the order)."""

from __future__ import annotations

import dataclasses
import datetime as dt

from tests.chaos.stories import PRICE_TIERS, Story

GRACE = dt.timedelta(hours=24)
STATUS = {
    "checkout.session.completed": "active",
    "invoice.paid": "active",
    "customer.subscription.deleted": "canceled",
    "invoice.payment_failed": "past_due",
}
# Audit rows one applied event writes (a failure here always starts the grace: nothing before it failed).
AUDITS = {"invoice.payment_failed": 2}


@dataclasses.dataclass(frozen=True)
class Expected:
    community_id: str
    subscription_id: str
    tier: str
    status: str
    grace_until: dt.datetime | None
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None


def expected(story: Story) -> Expected:
    newest = max(story.events, key=lambda event: event["created"])
    obj = newest["data"]["object"]
    if newest["type"] == "customer.subscription.updated":
        status = obj["status"]
    else:
        status = STATUS[newest["type"]]
    periods = [_period(event) for event in story.events if _period(event)]
    start, end = max(periods, key=lambda p: p[1]) if periods else (None, None)
    return Expected(
        community_id=story.community_id,
        subscription_id=story.subscription_id,
        tier="starter" if newest["type"] == "customer.subscription.deleted" else _tier(newest),
        status=status,
        grace_until=_utc(newest["created"]) + GRACE if status == "past_due" else None,
        current_period_start=_utc(start) if start else None,
        current_period_end=_utc(end) if end else None,
    )


def audits_of(event: dict) -> int:
    """Audit rows of an event that was applied (`processed`); an event recorded `stale` writes none."""
    return AUDITS.get(event["type"], 1)


def _tier(event: dict) -> str:
    obj = event["data"]["object"]
    for price in _prices(event):
        if price in PRICE_TIERS:
            return PRICE_TIERS[price]
    metadata = obj.get("metadata") or {}
    if event["type"].startswith("invoice."):
        parent = (obj.get("parent") or {}).get("subscription_details") or obj.get("subscription_details") or {}
        metadata = parent.get("metadata") or metadata
    return metadata["tier"]


def _prices(event: dict) -> list[str]:
    obj = event["data"]["object"]
    if event["type"].startswith("customer.subscription."):
        return [item["price"]["id"] for item in obj["items"]["data"]]
    if event["type"].startswith("invoice."):
        return [
            line.get("price", {}).get("id") or line["pricing"]["price_details"]["price"]
            for line in obj["lines"]["data"]
        ]
    return []  # a webhook's checkout session carries no line items


def _period(event: dict) -> tuple[int, int] | None:
    obj = event["data"]["object"]
    if event["type"].startswith("invoice."):
        period = obj["lines"]["data"][0]["period"]
        return period["start"], period["end"]
    if event["type"].startswith("customer.subscription."):
        item = obj["items"]["data"][0]
        start = obj.get("current_period_start", item.get("current_period_start"))
        end = obj.get("current_period_end", item.get("current_period_end"))
        return start, end
    return None


def _utc(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).replace(tzinfo=None)
