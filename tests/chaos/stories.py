"""The events of the chaos run: one Stripe story per community, built from full Stripe events in both API shapes.

Every story is shaped so that its outcome does not depend on the order the events are applied in (the faults
reorder them freely): each event carries everything it decides (a tier the matrix knows, or a price that
STRIPE_PRICE_TIERS maps), `created` values are distinct, periods never go back as `created` grows, a payment
failure or a deletion can only be a story's newest event. Three kinds of story:

- `metadata`: every event names the community in its metadata;
- `deferred`: only the checkout session names it (integrations that keep `community_id` on the session), so
  events that arrive before the checkout wait for it;
- `portal`: the plan is changed in Stripe's customer portal: the price moves, the metadata tier does not.
"""

from __future__ import annotations

import dataclasses
import random
import time

from receiver.sample_events import API_VERSIONS, build_event

DAY = 86_400
PRICE_TIERS = {"price_chaos_elite": "elite", "price_chaos_exclusive": "exclusive"}
TIERS = ("basic", "premium", "exclusive", "elite", "enterprise")
KINDS = ("metadata", "deferred", "portal")
FINALS = (
    "invoice.paid",
    "customer.subscription.updated",
    "trialing",
    "customer.subscription.deleted",
    "invoice.payment_failed",
)


@dataclasses.dataclass
class Story:
    community_id: str
    subscription_id: str
    kind: str
    events: list[dict]


@dataclasses.dataclass
class Run:
    stories: list[Story]
    poison: list[dict]  # events of a handled type that cannot be read: dead-lettered
    unknown: list[dict]  # event types we do not handle: ignored

    @property
    def events(self) -> list[dict]:
        return [e for story in self.stories for e in story.events] + self.poison + self.unknown


def build_run(seed: int, communities: int, events_per_story: int, poison: int = 5, unknown: int = 20) -> Run:
    rng = random.Random(seed)
    # Recent enough that a grace period started by a story's last failure has not ended by the end of the run.
    start = int(time.time()) - 6 * 3600
    stories = [_story(rng, n, start + n, events_per_story) for n in range(communities)]
    bad = []
    for n in range(poison):
        event = build_event("invoice.paid", f"chaos-poison-{n}", created=start + n)
        event["data"]["object"] = "poison: not an invoice"
        bad.append(event)
    others = [build_event("invoice.paid", f"chaos-other-{n}", created=start + n) for n in range(unknown)]
    for event in others:
        event["type"] = rng.choice(["invoice.upcoming", "customer.created", "charge.succeeded"])
    return Run(stories, bad, others)


def _story(rng: random.Random, n: int, base: int, size: int) -> Story:
    kind = KINDS[n % len(KINDS)]
    community, subscription = f"chaos-{n}", f"sub_chaos{n}"
    api = rng.choice(API_VERSIONS)
    ids = dict(customer_id=f"cus_chaos{n}", subscription_id=subscription, api_version=api)
    length = max(1, rng.randint(size // 2, size + size // 2))
    steps = ["checkout"] + [rng.choice(["invoice.paid", "customer.subscription.updated"]) for _ in range(length - 2)]
    if length > 1:
        steps.append(rng.choice(FINALS))
    # The checkout is not always first by `created`: a first invoice is often paid just before it.
    if length > 2 and rng.random() < 0.3:
        steps[0], steps[1] = steps[1], steps[0]
    events, tier, period = [], rng.choice(TIERS), 0
    for k, step in enumerate(steps):
        created = base + 1000 * k + rng.randint(0, 999) // 2 * 2  # distinct, increasing with k
        if step != "checkout" and rng.random() < 0.4:
            tier = rng.choice(TIERS)  # a plan change
        if step != "checkout" and rng.random() < 0.5:
            period += 1  # a renewal
        events.append(_event(step, kind, community, tier, created, period, ids))
    return Story(community, subscription, kind, events)


def _event(step: str, kind: str, community: str, tier: str, created: int, period: int, ids: dict) -> dict:
    names_community = kind != "deferred" or step == "checkout"
    kw = dict(
        ids,
        created=created,
        tier=tier,
        period_start=1_760_000_000 + period * 30 * DAY,
        period_end=1_760_000_000 + (period + 1) * 30 * DAY,
    )
    if kind == "portal" and step != "checkout":
        # The portal moved the price; the metadata still says the tier of the checkout.
        kw.update(
            tier="basic", price_id="price_chaos_elite" if tier in ("elite", "enterprise") else "price_chaos_exclusive"
        )
    event_type = {"checkout": "checkout.session.completed", "trialing": "customer.subscription.updated"}.get(step, step)
    status = {"trialing": "trialing", "customer.subscription.updated": "active"}.get(step)
    if status:
        kw["status"] = status
    return build_event(event_type, community if names_community else None, **kw)
