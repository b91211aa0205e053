"""consumer.handlers through consumer.batch.apply_batch, on the real databases (sqlite and PostgreSQL),
with realistic events in both Stripe API shapes."""

import copy
import json
import time

import pytest

from billing.clock import from_epoch
from billing.stripe_events import read_facts
from billing.vocabulary import FINAL_EVENT_STATUSES, HANDLED_TYPES
from consumer.batch import (
    BatchDeadlineExceeded,
    apply_batch,
    settlement_of,
)
from consumer.entries import Entry, Failure, PriorState
from models.tables import AuditLog, Subscription, WebhookEvent
from receiver.sample_events import EVENT_TYPES
from tests.handler_helpers import (
    DAY,
    P_END,
    P_START,
    POLICY,
    T0,
    TIERS,
    apply,
    audits,
    checkout,
    entry_for,
    ev,
    past_due,
    row,
    run_batch,
    snapshot,
    webhook,
)
from tests.stripe_helpers import load_peer_events


@pytest.mark.parametrize("tier,expected", [("premium", "premium"), (None, "basic")])
def test_checkout_creates_the_subscription(db, api, tier, expected):
    event = ev("checkout.session.completed", api, tier=tier)
    outcomes = run_batch(db, [entry_for(event)])
    assert [(o.outcome, o.community_id) for o in outcomes] == [("processed", "c1")]
    sub = row()
    assert (sub.stripe_customer_id, sub.stripe_subscription_id, sub.tier, sub.status, sub.grace_until) == (
        "cus_1",
        "sub_1",
        expected,
        "active",
        None,
    )
    assert sub.last_event_created == T0
    [(kind, data)] = audits()
    assert kind == "subscription_created" and data["tier"] == expected and data["subscription_id"] == "sub_1"
    assert data["stripe_event_id"] == event["id"]
    hook = webhook(event)
    assert (hook.status, hook.event_type, hook.error_message) == ("processed", event["type"], None)
    assert hook.processed_at is not None


@pytest.mark.parametrize(
    "event_type", ["checkout.session.completed", "invoice.paid", "customer.subscription.updated"]
)  # status active
def test_active_clears_grace(db, api, event_type):
    past_due(db, api)
    assert apply(db, ev(event_type, api, created=T0 + 60, tier="elite")) == ["processed"]
    assert (row().status, row().grace_until) == ("active", None)


def test_invoice_paid(db, api):
    checkout(db, api)
    event = ev("invoice.paid", api, created=T0 + 20, amount=4900, currency="eur", tier=None)
    invoice = event["data"]["object"]
    assert apply(db, event) == ["processed"]
    sub = row()
    assert (sub.status, sub.tier) == ("active", "basic")  # no tier in metadata or price: the stored one is kept
    assert (sub.current_period_start, sub.current_period_end) == (from_epoch(P_START), from_epoch(P_END))
    assert sub.current_period_start != from_epoch(invoice["period_start"])
    assert sub.current_period_end != from_epoch(invoice["period_end"])
    kind, data = audits()[-1]
    assert kind == "payment_succeeded"
    assert (data["invoice_id"], data["amount"], data["currency"]) == (invoice["id"], 4900, "eur")


def test_invoice_paid_before_checkout_creates_the_row(db, api):
    assert apply(db, ev("invoice.paid", api)) == ["processed"]
    sub = row()
    assert (sub.tier, sub.status, sub.stripe_subscription_id, sub.stripe_customer_id) == (
        "premium",
        "active",
        "sub_1",
        "cus_1",
    )
    assert sub.current_period_end == from_epoch(P_END)
    assert [kind for kind, _ in audits()] == ["payment_succeeded"]


def test_payment_failed_starts_grace_once(db, api):
    checkout(db, api, tier="premium")
    first = ev("invoice.payment_failed", api, created=T0 + 100, attempt_count=1)
    assert apply(db, first) == ["processed"]
    grace = from_epoch(T0 + 100 + 24 * 3600)
    sub = row()
    assert (sub.status, sub.grace_until, sub.tier) == ("past_due", grace, "premium")
    (k1, failed), (k2, started) = audits()[1:]
    assert (k1, k2) == ("payment_failed", "grace_period_started")
    assert failed["invoice_id"] == first["data"]["object"]["id"] and failed["attempt_count"] == 1
    assert failed["grace_until"] == started["grace_until"] == grace.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert apply(db, ev("invoice.payment_failed", api, created=T0 + 5000, attempt_count=2)) == ["processed"]
    assert (row().status, row().grace_until) == ("past_due", grace)
    assert [k for k, _ in audits()[3:]] == ["payment_failed"]
    assert audits()[-1][1]["attempt_count"] == 2


@pytest.mark.parametrize(
    "stripe_status,expected",
    [
        ("active", "active"),
        ("trialing", "trialing"),
        ("past_due", "past_due"),
        ("unpaid", "unpaid"),
        ("incomplete", "unpaid"),
        ("incomplete_expired", "unpaid"),
        ("paused", "unpaid"),
    ],
)
def test_subscription_updated(db, api, stripe_status, expected):
    checkout(db, api)
    event = ev("customer.subscription.updated", api, created=T0 + 60, tier="elite", status=stripe_status)
    assert apply(db, event) == ["processed"]
    sub = row()
    assert (sub.tier, sub.status) == ("elite", expected)
    assert (sub.current_period_start, sub.current_period_end) == (from_epoch(P_START), from_epoch(P_END))
    kinds = [k for k, _ in audits()]
    if expected == "past_due":
        assert sub.grace_until == from_epoch(T0 + 60 + 24 * 3600)
        assert kinds == ["subscription_created", "grace_period_started", "subscription_updated"]
    else:
        assert sub.grace_until is None
        assert kinds == ["subscription_created", "subscription_updated"]
    data = audits("subscription_updated")[0][1]
    assert (data["tier"], data["status"], data["stripe_status"]) == ("elite", expected, stripe_status)
    assert data["previous"] == {"tier": "basic", "status": "active"}


@pytest.mark.parametrize("event_type", ["checkout.session.completed", "customer.subscription.updated"])
@pytest.mark.parametrize("tier", ["pro", None])  # not in the tier matrix / no tier in metadata
@pytest.mark.parametrize("price_id,expected", [("price_elite", "elite"), ("price_1", "basic")])
def test_tier_from_price_or_kept(db, api, event_type, tier, price_id, expected):
    checkout(db, api, tier="basic")
    event = ev(event_type, api, created=T0 + 1, tier=tier, price_id=price_id)
    if event_type == "checkout.session.completed":  # a session names its prices only with line_items expanded
        event["data"]["object"]["line_items"] = {"object": "list", "data": [{"price": {"id": price_id}}]}
    assert apply(db, event) == ["processed"]
    assert row().tier == expected
    unresolved = audits("tier_unresolved")
    if tier is None or expected == "elite":
        assert unresolved == []
    else:  # "pro" and no price maps to a tier: the current tier is kept, and the audit says why
        [(_, data)] = unresolved
        assert (data["metadata_tier"], data["kept_tier"], data["price_ids"]) == ("pro", "basic", ["price_1"])
        assert "STRIPE_PRICE_TIERS" in data["reason"]


@pytest.mark.parametrize("event_type", ["checkout.session.completed", "invoice.paid", "customer.subscription.updated"])
def test_unknown_metadata_tier_without_a_row(db, api, event_type):
    assert apply(db, ev(event_type, api, tier="pro")) == ["processed"]
    assert row().tier == "starter"  # nothing to keep: never grants a paid tier
    [(_, data)] = audits("tier_unresolved")  # exactly one explanation
    assert data["kept_tier"] == "starter"


def test_subscription_deleted(db, api):
    checkout(db, api, tier="premium")
    past_due(db, api, created=T0 + 10)
    assert apply(db, ev("customer.subscription.deleted", api, created=T0 + 20)) == ["processed"]
    assert (row().tier, row().status, row().grace_until) == ("starter", "canceled", None)
    assert audits()[-1][0] == "subscription_canceled"


@pytest.mark.parametrize(
    "event_type",
    ["customer.subscription.deleted", "customer.subscription.updated", "invoice.paid", "invoice.payment_failed"],
)
def test_an_old_subscriptions_events_are_ignored(db, api, event_type):
    checkout(db, api, tier="premium", subscription_id="sub_new")
    before, n_audits = snapshot(), len(audits())
    event = ev(event_type, api, created=T0 + 20, subscription_id="sub_old", status="canceled")
    assert apply(db, event) == ["ignored"]
    assert snapshot() == before and len(audits()) == n_audits
    assert webhook(event).status == "ignored"


def test_a_new_subscription_takes_over_once_the_old_one_is_canceled(db, api):
    checkout(db, api, tier="premium", subscription_id="sub_old")
    deleted = ev("customer.subscription.deleted", api, created=T0 + 10, subscription_id="sub_old")
    assert apply(db, deleted) == ["processed"]
    event = ev("customer.subscription.updated", api, created=T0 + 20, subscription_id="sub_new", tier="elite")
    assert apply(db, event) == ["processed"]
    assert (row().stripe_subscription_id, row().tier, row().status) == ("sub_new", "elite", "active")


def test_a_one_off_invoice_is_ignored(db, api):
    checkout(db, api, tier="premium")
    assert apply(db, ev("customer.subscription.deleted", api, created=T0 + 10)) == ["processed"]
    event = ev("invoice.paid", api, created=T0 + 20)
    obj = event["data"]["object"]
    obj.pop("subscription", None)
    obj.pop("parent", None)
    assert apply(db, event) == ["ignored"]
    assert row().status == "canceled"


@pytest.mark.parametrize(
    "event_type,expected",
    [
        ("invoice.paid", "active"),
        ("invoice.payment_failed", "past_due"),
        ("customer.subscription.updated", "active"),
        ("customer.subscription.deleted", "canceled"),
    ],
)
def test_found_by_stored_subscription_id(db, api, event_type, expected):
    checkout(db, api, tier="exclusive")
    event = ev(event_type, api, community_id=None, tier=None, created=T0 + 5)
    outcomes = run_batch(db, [entry_for(event)])
    assert [(o.outcome, o.community_id) for o in outcomes] == [("processed", "c1")]
    assert row().status == expected
    assert Subscription.select().count() == 1


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_stale_event_changes_nothing(db, api, event_type):
    checkout(db, api, created=T0 + 100)
    later = ev(
        "customer.subscription.updated",
        api,
        created=T0 + 101,
        tier="basic",
        period_start=P_START + 30 * DAY,
        period_end=P_END + 30 * DAY,
    )
    assert apply(db, later) == ["processed"]
    before, n_audits = snapshot(), len(audits())
    event = ev(event_type, api, created=T0, tier="elite", status="past_due")
    assert apply(db, event) == ["stale"]
    assert snapshot() == before and len(audits()) == n_audits
    assert webhook(event).status == "stale"


def _patched(event, event_type=None, **obj):
    event["data"]["object"].update(obj)
    event["type"] = event_type or event["type"]
    return event


IGNORED = {
    "unknown type": lambda api: _patched(ev("invoice.paid", api), "invoice.upcoming"),
    "payment mode": lambda api: _patched(ev("checkout.session.completed", api), mode="payment", subscription=None),
    **{
        f"{t} without community": (lambda api, t=t: ev(t, api, community_id=None, subscription_id="sub_x"))
        for t in EVENT_TYPES
        if t.startswith("checkout.")
    },
}


@pytest.mark.parametrize("make", IGNORED.values(), ids=IGNORED.keys())
def test_ignored(db, api, make):
    event = make(api)
    assert apply(db, event) == ["ignored"]
    assert Subscription.select().count() == 0 and AuditLog.select().count() == 0
    hook = webhook(event)
    assert hook.status == "ignored" and hook.processed_at is not None


def test_exactly_once(db, api):
    event = ev("invoice.paid", api)
    assert apply(db, event, already={event["id"]}) == ["duplicate"]  # known to Redis: no database work
    assert WebhookEvent.select().count() == 0 and Subscription.select().count() == 0
    entry = entry_for(event)
    assert apply(db, entry, entry) == ["processed", "duplicate"]  # twice in one batch
    assert apply(db, entry) == ["duplicate"]  # redelivered in a later batch
    assert len(audits()) == 1 and WebhookEvent.select().count() == 1


def _broken(event):
    bad = copy.deepcopy(event)
    bad["data"]["object"] = "oops"
    return bad


def test_a_failing_event_does_not_spoil_its_batch(db, api):
    good1 = ev("checkout.session.completed", api, community_id="c1")
    bad = _broken(ev("invoice.paid", api, community_id="c2"))
    good2 = ev("invoice.paid", api, community_id="c3", created=T0 + 1)
    outcomes = run_batch(db, [entry_for(good1), entry_for(bad), entry_for(good2)])
    assert [o.outcome for o in outcomes] == ["processed", "failed", "processed"]
    assert "UnreadableEvent" in outcomes[1].error and outcomes[1].failure.count == 1
    assert row("c1").status == row("c3").status == "active" and row("c2") is None
    hook = webhook(bad)
    assert hook.status == "failed" and "data.object is not an object" in hook.error_message
    assert hook.processed_at is None
    # Redelivered unchanged: fails again, one row, still failed.
    assert apply(db, bad) == ["failed"]
    assert webhook(bad).status == "failed" and WebhookEvent.select().count() == 3


def test_the_last_allowed_failure_makes_the_event_dead(db, api):
    bad = entry_for(_broken(ev("invoice.paid", api, community_id="c2")))
    prior = PriorState(failures={bad.entry_id: Failure(count=4, first_failed_ms=1_700_000_000_000)})
    [outcome] = apply_batch(db, [bad], prior, POLICY, max_deliveries=5)
    assert (outcome.outcome, outcome.failure) == ("dead", Failure(5, 1_700_000_000_000))
    assert webhook({"id": bad.event_id}).status == "dead"
    settlement = settlement_of([outcome], prior)
    assert settlement.ack_ids == () and [d.entry for d in settlement.dead] == [bad]
    assert settlement.processed_event_ids == () and not settlement.failures


def test_a_deadline_rolls_the_whole_batch_back(db, api):
    with pytest.raises(BatchDeadlineExceeded):
        apply_batch(
            db,
            [entry_for(ev("checkout.session.completed", api))],
            PriorState(),
            POLICY,
            max_deliveries=5,
            deadline=time.monotonic() - 1,
        )
    assert WebhookEvent.select().count() == 0 and row() is None


def test_an_unrecordable_event_does_not_spoil_its_batch(db, api):
    too_long = ev("invoice.paid", api, community_id="c2", event_id="evt_" + "x" * 300)  # over the column's 255
    outcomes = apply(db, ev("invoice.paid", api), too_long)
    assert outcomes[0] == "processed" and outcomes[1] in ("processed", "failed")  # failed on PostgreSQL
    assert row().status == "active"


def test_a_failed_event_is_retried_when_readable(db, api):
    good = ev("invoice.paid", api)
    assert apply(db, _broken(good)) == ["failed"]
    assert apply(db, good) == ["processed"]  # same event id, readable now: not a duplicate
    hook = webhook(good)
    assert (hook.status, hook.error_message) == ("processed", None) and hook.processed_at is not None
    assert row().status == "active" and len(audits("payment_succeeded")) == 1
    assert apply(db, _broken(good)) == ["duplicate"]  # once applied, never again, readable or not
    assert webhook(good).status == "processed"


# --- the peer corpus ----------------------------------------------------------------------------


def test_peer_events(db):
    peers = load_peer_events()
    ids = []
    for name, raw in peers:  # raw, byte for byte, one batch each, in file order
        event = json.loads(raw)
        outcomes = run_batch(db, [entry_for(event, payload=raw)])
        assert len(outcomes) == 1 and outcomes[0].outcome in (
            "processed",
            "ignored",
            "stale",
            "deferred",
            "duplicate",
        ), (name, outcomes)
        ids.append(event["id"])
    statuses = dict(WebhookEvent.select(WebhookEvent.stripe_event_id, WebhookEvent.status).tuples())
    assert set(statuses) == set(ids)
    assert set(statuses.values()) <= set(FINAL_EVENT_STATUSES)

    # The same events, made ours: a fresh id, created now, a community in the metadata.
    now = int(time.time())
    for n, (name, raw) in enumerate(peers):
        event = json.loads(raw)
        if event["type"] not in HANDLED_TYPES:
            continue
        obj = event["data"]["object"]
        event.update(id=f"evt_peer_{n}", created=now)
        obj["metadata"] = {**(obj.get("metadata") or {}), "community_id": f"peer-{n}"}
        [outcome] = run_batch(db, [entry_for(event)])
        one_off_invoice = event["type"].startswith("invoice.") and not read_facts(event).subscription_id
        expected = "ignored" if obj.get("mode") in ("payment", "setup") or one_off_invoice else "processed"
        assert outcome.outcome == expected, (name, outcome)
        assert webhook(event).status == expected
        if expected == "processed":
            sub = row(f"peer-{n}")
            assert sub.tier in TIERS and sub.status in ("active", "past_due", "canceled", "trialing", "unpaid"), name
            assert audits(community_id=f"peer-{n}"), name
    assert WebhookEvent.select().where(WebhookEvent.status == "failed").count() == 0
    assert Subscription.select().count() >= 5


@pytest.mark.parametrize("created", [b"1e400", b"inf", b"-inf", b"nan", b"9" * 500, b"soon"])
def test_an_entry_with_an_unusable_created_field_is_read(created):
    """Entries are written by our receiver, but `dead retry` or an operator's XADD can carry anything."""
    entry = Entry.from_fields(
        "1700000000000-0",
        {
            b"event_id": b"evt_1",
            b"event_type": b"invoice.paid",
            b"created": created,
            b"payload": b"{}",
            b"received_at": b"1",
        },
    )
    assert (entry.event_id, entry.created) == ("evt_1", 0)
