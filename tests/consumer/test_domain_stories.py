"""Stripe's real behaviour, story by story (the Domain section of CONTRACT.md): late, doubled and reordered
deliveries, portal plan changes, first invoices that fail, bank debits that settle days later, and ids that
arrive before the checkout that explains them. Full Stripe events in both API shapes, on SQLite and
PostgreSQL, applied one batch per delivery as the consumer would."""

import json
import threading

import pytest

from billing.clock import from_epoch
from billing.entitlements import entitlements
from billing.tiers import TierMatrix
from consumer import deferred
from consumer.batch import apply_batch, settlement_of
from consumer.entries import PriorState
from models.db import database_proxy
from models.tables import AuditLog, DeferredEvent, Subscription, WebhookEvent
from tests.handler_helpers import (
    DAY,
    P_END,
    P_START,
    POLICY,
    T0,
    apply,
    audits,
    checkout,
    entry_for,
    ev,
    row,
    run_batch,
    webhook,
)


def effective(community_id="c1"):
    return entitlements(community_id, row(community_id), TierMatrix.default(), from_epoch(T0 + 60))


# --- tiers -------------------------------------------------------------------------------------------


def test_a_checkout_without_a_tier_keeps_the_subscriptions_known_tier(db, api):
    """Item 5: the integration keeps its tier on the subscription; the session says none."""
    assert apply(db, ev("customer.subscription.updated", api, created=T0, tier="exclusive")) == ["processed"]
    assert apply(db, ev("checkout.session.completed", api, created=T0 + 5, tier=None)) == ["processed"]
    assert (row().tier, row().status) == ("exclusive", "active")


def test_a_new_subscription_without_a_tier_starts_on_basic(db, api):
    checkout(db, api, tier="elite")
    assert apply(db, ev("customer.subscription.deleted", api, created=T0 + 10)) == ["processed"]
    assert apply(db, ev("checkout.session.completed", api, created=T0 + 20, tier=None, subscription_id="sub_2")) == [
        "processed"
    ]
    assert (row().tier, row().status, row().stripe_subscription_id) == ("basic", "active", "sub_2")


def test_a_portal_plan_change_moves_the_price_not_the_metadata(db, api):
    """Item 11: the price mapping wins over a metadata tier that the portal never updates."""
    checkout(db, api, tier="basic", price_id="price_basic")
    change = ev("customer.subscription.updated", api, created=T0 + 10, tier="basic", price_id="price_elite")
    assert apply(db, change) == ["processed"]
    assert row().tier == "elite"
    renewal = ev("invoice.paid", api, created=T0 + 20, tier="basic", price_id="price_elite")
    assert apply(db, renewal) == ["processed"]
    assert row().tier == "elite"


def test_invoice_paid_resolves_the_tier_too(db, api):
    checkout(db, api, tier="basic")
    assert apply(db, ev("invoice.paid", api, created=T0 + 10, tier="premium")) == ["processed"]
    assert row().tier == "premium"


# --- order across subscriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("order", ["old deletion first", "new checkout first"])
def test_an_old_subscriptions_late_deletion_never_ends_the_new_one(db, api, order):
    """Item 6: the community moves from sub_1 to sub_2; sub_1's deletion is the newest event of all."""
    checkout(db, api, created=T0, tier="basic")
    old_deleted = ev("customer.subscription.deleted", api, created=T0 + 300)
    new = [
        ev("checkout.session.completed", api, created=T0 + 100, subscription_id="sub_2", tier="premium"),
        ev(
            "invoice.paid",
            api,
            created=T0 + 101,
            subscription_id="sub_2",
            tier="premium",
            period_start=P_START + 30 * DAY,
            period_end=P_END + 30 * DAY,
        ),
    ]
    deliveries = [old_deleted, *new] if order == "old deletion first" else [*new, old_deleted]
    outcomes = [apply(db, event)[0] for event in deliveries]
    assert outcomes == (
        ["processed", "processed", "processed"]
        if order == "old deletion first"
        else ["processed", "processed", "ignored"]
    )
    sub = row()
    assert (sub.stripe_subscription_id, sub.status, sub.tier) == ("sub_2", "active", "premium")
    assert sub.current_period_end == from_epoch(P_END + 30 * DAY)
    renewal = ev("invoice.paid", api, created=T0 + 400, subscription_id="sub_2", tier=None)
    assert apply(db, renewal) == ["processed"]
    assert (row().status, row().tier) == ("active", "premium")


def test_a_late_checkout_of_the_replaced_subscription_is_ignored(db, api):
    checkout(db, api, created=T0, tier="basic")
    checkout(db, api, created=T0 + 100, tier="elite", subscription_id="sub_2")
    late = ev("checkout.session.completed", api, created=T0 + 1, tier="basic")  # sub_1's, delivered last
    assert apply(db, late) == ["ignored"]
    assert (row().stripe_subscription_id, row().tier) == ("sub_2", "elite")


# --- events before their community is known ----------------------------------------------------------


def test_events_before_the_checkout_are_deferred_then_applied_in_order(db, api):
    """Item 7: community_id only on the checkout session; the subscription was deleted before it arrived."""
    early = [
        ev("customer.subscription.updated", api, community_id=None, created=T0 + 2, tier=None),
        ev("customer.subscription.deleted", api, community_id=None, created=T0 + 50, tier=None),
        ev("invoice.paid", api, community_id=None, created=T0 + 1, tier=None),
    ]
    for event in early:
        assert apply(db, event) == ["deferred"]
        assert webhook(event).status == "deferred"
    assert Subscription.select().count() == 0 and DeferredEvent.select().count() == 3
    assert apply(db, ev("checkout.session.completed", api, created=T0, tier="premium")) == ["processed"]
    sub = row()
    assert (sub.status, sub.tier, sub.stripe_subscription_id) == ("canceled", "starter", "sub_1")
    assert [webhook(e).status for e in early] == ["processed", "processed", "processed"]
    assert [webhook(e).community_id for e in early] == ["c1", "c1", "c1"]
    assert DeferredEvent.select().count() == 0
    assert [kind for kind, _ in audits()] == [
        "subscription_created",
        "payment_succeeded",
        "subscription_updated",
        "subscription_canceled",
    ]


def test_a_deferred_event_is_a_duplicate_when_delivered_again(db, api):
    event = ev("invoice.paid", api, community_id=None)
    assert apply(db, event) == ["deferred"]
    assert apply(db, event) == ["duplicate"]
    assert DeferredEvent.select().count() == 1


def test_deferred_events_older_than_30_days_are_dropped_with_an_audit_row(db, api):
    old = ev("invoice.paid", api, community_id=None, created=T0)
    young = ev("invoice.paid", api, community_id=None, created=T0 + 29 * DAY, subscription_id="sub_2")
    assert apply(db, old, young) == ["deferred", "deferred"]
    assert deferred.drop_expired(db, now=from_epoch(T0 + 30 * DAY + 1)) == [old["id"]]
    assert [row.stripe_event_id for row in DeferredEvent.select()] == [young["id"]]
    assert webhook(old).status == "ignored"
    [dropped] = AuditLog.select().where(AuditLog.event_type == "deferred_dropped")
    data = json.loads(dropped.event_data)
    assert data["stripe_event_id"] == old["id"] and json.loads(data["payload"])["id"] == old["id"]


# --- first payments ----------------------------------------------------------------------------------


def test_a_subscription_whose_first_invoice_fails_gets_no_grace(db, api):
    """Item 8: Stripe's `incomplete`: nothing was ever paid, so no paid features for 24 h."""
    first = ev("invoice.payment_failed", api, billing_reason="subscription_create")
    assert apply(db, first) == ["processed"]
    assert (row().status, row().grace_until) == ("unpaid", None)
    assert effective()["tier"] == "starter" and not effective()["in_grace_period"]
    assert [kind for kind, _ in audits()] == ["payment_failed"]
    assert apply(db, ev("invoice.paid", api, created=T0 + 60, billing_reason="subscription_create")) == ["processed"]
    assert (row().status, effective()["tier"]) == ("active", "premium")


def test_a_renewal_that_fails_after_a_paid_first_invoice_gets_grace(db, api):
    checkout(db, api)
    failed = ev("invoice.payment_failed", api, created=T0 + 10, billing_reason="subscription_create")
    assert apply(db, failed) == ["processed"]  # a checkout paid: the subscription was paid
    assert row().status == "past_due" and row().grace_until == from_epoch(T0 + 10 + 24 * 3600)


def test_a_bank_debit_checkout_grants_only_once_the_payment_settles(db, api):
    """Item 9: SEPA/ACH: the session completes unpaid; async_payment_succeeded arrives days later."""
    completed = ev("checkout.session.completed", api, payment_status="unpaid", tier="premium")
    assert apply(db, completed) == ["processed"]
    sub = row()
    assert (sub.stripe_subscription_id, sub.status, sub.tier) == ("sub_1", "unpaid", "premium")
    assert effective()["tier"] == "starter"
    settled = ev("checkout.session.async_payment_succeeded", api, created=T0 + 3 * DAY)
    assert apply(db, settled) == ["processed"]
    assert (row().status, row().tier) == ("active", "premium")
    assert audits()[-1][0] == "payment_succeeded"


def test_a_failed_bank_debit_grants_nothing(db, api):
    assert apply(db, ev("checkout.session.completed", api, payment_status="unpaid")) == ["processed"]
    assert apply(db, ev("checkout.session.async_payment_failed", api, created=T0 + 3 * DAY)) == ["processed"]
    assert row().status == "unpaid" and effective()["tier"] == "starter"
    assert audits()[-1][0] == "payment_failed"


def test_a_bank_debit_settled_by_invoice_paid(db, api):
    assert apply(db, ev("checkout.session.completed", api, payment_status="unpaid", tier="elite")) == ["processed"]
    assert apply(db, ev("invoice.paid", api, created=T0 + 2 * DAY, tier=None)) == ["processed"]
    assert (row().status, row().tier) == ("active", "elite")


# --- periods, trials, same-second races --------------------------------------------------------------


def test_the_period_survives_an_invoice_paid_older_than_the_checkout(db, api):
    """Item 10: the first invoice is paid before the checkout session completes; delivered after it."""
    checkout(db, api, created=T0 + 5)
    paid = ev("invoice.paid", api, created=T0)
    assert apply(db, paid) == ["stale"]
    assert (row().current_period_start, row().current_period_end) == (from_epoch(P_START), from_epoch(P_END))
    assert row().status == "active"


def test_periods_only_move_forward(db, api):
    checkout(db, api)
    newer = ev(
        "customer.subscription.updated",
        api,
        created=T0 + 10,
        period_start=P_START + 30 * DAY,
        period_end=P_END + 30 * DAY,
    )
    older_period = ev("invoice.paid", api, created=T0 + 20)  # newer event, but the earlier period
    assert apply(db, newer) == ["processed"] and apply(db, older_period) == ["processed"]
    assert row().current_period_end == from_epoch(P_END + 30 * DAY)


def test_trialing_is_kept(db, api):
    checkout(db, api)
    trial = ev("customer.subscription.updated", api, created=T0 + 10, status="trialing")
    assert apply(db, trial) == ["processed"]
    assert row().status == "trialing"
    trial_invoice = ev("invoice.paid", api, created=T0 + 11, amount=0, billing_reason="subscription_create")
    assert apply(db, trial_invoice) == ["processed"]
    assert row().status == "trialing" and effective()["tier"] == "premium"
    first_real = ev("invoice.paid", api, created=T0 + 14 * DAY)
    assert apply(db, first_real) == ["processed"]
    assert row().status == "active"


def test_a_trialing_update_clears_grace(db, api):
    checkout(db, api)
    assert apply(db, ev("invoice.payment_failed", api, created=T0 + 10)) == ["processed"]
    assert apply(db, ev("customer.subscription.updated", api, created=T0 + 20, status="trialing")) == ["processed"]
    assert (row().status, row().grace_until) == ("trialing", None)


def test_a_failure_in_the_same_second_as_the_successful_retry_delivered_last(db, api):
    """Item 10: the retry succeeds within the second of the failure; Stripe delivers the failure last."""
    checkout(db, api)
    paid = ev("invoice.paid", api, created=T0 + 100, invoice_id="in_retry")
    failed = ev("invoice.payment_failed", api, created=T0 + 100, invoice_id="in_retry", attempt_count=2)
    assert apply(db, paid) == ["processed"]
    assert apply(db, failed) == ["stale"]
    assert (row().status, row().grace_until) == ("active", None)


def test_a_failure_of_another_invoice_in_the_same_second_still_counts(db, api):
    checkout(db, api)
    assert apply(db, ev("invoice.paid", api, created=T0 + 100, invoice_id="in_a")) == ["processed"]
    assert apply(db, ev("invoice.payment_failed", api, created=T0 + 100, invoice_id="in_b")) == ["processed"]
    assert row().status == "past_due"


# --- community ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("community_id", ["a/b", "with space", "gen:42", "ünïcode", "x" * 129, "tab\tinside"])
def test_a_community_id_breaking_the_rule_is_a_handler_failure(db, api, community_id):
    """Item 12: one rule on SQLite and PostgreSQL; the event reaches the dead letters, never a row."""
    event = ev("checkout.session.completed", api, community_id=community_id)
    assert apply(db, event) == ["failed"]
    assert Subscription.select().count() == 0
    hook = webhook(event)
    assert hook.status == "failed" and "community_id" in hook.error_message


@pytest.mark.parametrize("community_id", ["42", "guild-7.eu_west", "x" * 128, "A"])
def test_a_community_id_within_the_rule_is_stored(db, api, community_id):
    assert apply(db, ev("checkout.session.completed", api, community_id=community_id)) == ["processed"]
    assert row(community_id) is not None


# --- redelivery and concurrency ----------------------------------------------------------------------


def test_a_redelivery_recognised_as_applied_names_its_community(db, api):
    """Item 4: the crash came between the commit and the cache drop; the redelivery drops it."""
    event = ev("customer.subscription.deleted", api)
    [first] = run_batch(db, [entry_for(event)])
    [again] = run_batch(db, [entry_for(event)])
    assert (first.outcome, again.outcome) == ("processed", "duplicate")
    assert settlement_of([again], PriorState()).changed_communities == ("c1",)


def test_concurrent_first_events_of_new_communities_are_all_applied(db, api):
    """Item 15: two consumers create the same new communities at once (on PostgreSQL both inserts run; on
    SQLite the write lock serialises them): an upsert, never `failed`."""
    communities = [f"new-{n}" for n in range(40)]
    batches = {
        name: [entry_for(ev("invoice.paid", api, community_id=c, subscription_id=f"sub_{c}")) for c in communities]
        for name in ("a", "b")
    }
    start, outcomes = threading.Barrier(2), {}

    def consume(name):
        start.wait()
        outcomes[name] = [o.outcome for o in apply_batch(db, batches[name], PriorState(), POLICY, max_deliveries=5)]
        database_proxy.close()

    threads = [threading.Thread(target=consume, args=(name,)) for name in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert outcomes == {"a": ["processed"] * 40, "b": ["processed"] * 40}
    assert Subscription.select().count() == 40
    assert WebhookEvent.select().where(WebhookEvent.status != "processed").count() == 0
