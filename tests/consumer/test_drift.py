"""`python -m consumer reconcile subscriptions [--fix]`: each community's row against its subscription as Stripe
(tests/consumer/stripe_server.py) has it now; --fix applies Stripe's state through the handler, once, with
audit rows."""

from __future__ import annotations

import json

import pytest

from billing.clock import from_epoch, iso
from billing.config import Settings
from models.tables import AuditLog
from tests.consumer.ops_helpers import invoke, one_line_error
from tests.consumer.stripe_server import API_KEY
from tests.handler_helpers import DAY, P_END, P_START, T0, apply, ev, row

KEYS = Settings().keys


@pytest.fixture
def stripe_cli_env(cli_env, fake_stripe):
    """cli_env (the test's database), with Stripe's API at the local server."""
    return {**cli_env, "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake_stripe.url}


def subscription(api, community_id, **kw) -> dict:
    """The subscription as Stripe returns it from GET /v1/subscriptions/<id>."""
    return ev("customer.subscription.updated", api, community_id, **kw)["data"]["object"]


@pytest.fixture
def drifted(db, api, fake_stripe, r):
    """d1 drifted (Stripe: elite, past_due, next period), d2 in sync, d3 unknown to Stripe, d4 canceled in Stripe."""
    ids = {c: {"customer_id": f"cus_{c}", "subscription_id": f"sub_{c}"} for c in ("d1", "d2", "d3", "d4")}
    for community in ids:
        apply(db, ev("checkout.session.completed", api, community, tier="basic", **ids[community]))
    in_sync = ev("customer.subscription.updated", api, "d2", tier="premium", **ids["d2"])
    apply(db, in_sync)
    fake_stripe.subscriptions["sub_d1"] = subscription(
        api, "d1", tier="elite", status="past_due", period_start=P_END, period_end=P_END + 30 * DAY, **ids["d1"]
    )
    fake_stripe.subscriptions["sub_d2"] = in_sync["data"]["object"]
    fake_stripe.subscriptions["sub_d4"] = subscription(api, "d4", tier="basic", status="canceled", **ids["d4"])
    for community in ids:
        r.set(KEYS.entitlement_answer(community), json.dumps({"tier": "basic"}))
    return ids


def reconciled_rows() -> list[tuple[str, dict]]:
    query = AuditLog.select().where(AuditLog.event_type == "reconciled").order_by(AuditLog.id)
    return [(a.community_id, json.loads(a.event_data)) for a in query]


def test_the_report_shows_each_difference_and_changes_nothing(stripe_cli_env, drifted, r):
    audits_before = AuditLog.select().count()
    result = invoke(stripe_cli_env, "reconcile", "subscriptions", "--json")
    assert result.exit_code == 0, result.output
    report = {d["community_id"]: d for d in json.loads(result.stdout)}
    assert report["d1"]["differences"] == {
        "tier": {"ours": "basic", "stripe": "elite"},
        "status": {"ours": "active", "stripe": "past_due"},
        "current_period_start": {"ours": None, "stripe": iso(from_epoch(P_END))},
        "current_period_end": {"ours": None, "stripe": iso(from_epoch(P_END + 30 * DAY))},
    }
    assert report["d2"] == {
        "community_id": "d2",
        "subscription_id": "sub_d2",
        "differences": {},
        "fixed": False,
        "problem": None,
    }
    assert report["d3"]["problem"] == "Stripe has no such subscription" and not report["d3"]["differences"]
    assert {k: v["stripe"] for k, v in report["d4"]["differences"].items() if k in ("tier", "status")} == {
        "tier": "starter",
        "status": "canceled",
    }
    assert not any(d["fixed"] for d in report.values())
    assert (row("d1").tier, row("d1").status, row("d4").status) == ("basic", "active", "active")
    assert AuditLog.select().count() == audits_before  # the handler's rows were rolled back with the rest
    assert r.exists(KEYS.entitlement_answer("d1"))
    text = invoke(stripe_cli_env, "reconcile", "subscriptions").stdout
    assert "2 of 4 communities differ from Stripe; --fix applies Stripe's state" in text
    assert "d3  " in text and "Stripe has no such subscription" in text and "1 could not be compared" in text


def test_fix_applies_stripes_state_once(stripe_cli_env, drifted, r):
    fixed = invoke(stripe_cli_env, "reconcile", "subscriptions", "--fix")
    assert "fixed 2 of 4 communities (audit rows `reconciled`)" in fixed.stdout, fixed.output
    assert (row("d1").tier, row("d1").status) == ("elite", "past_due") and row("d1").grace_until is not None
    assert (row("d4").tier, row("d4").status) == ("starter", "canceled")
    assert (row("d2").tier, row("d3").tier) == ("premium", "basic")
    rows = reconciled_rows()
    assert [community for community, _ in rows] == ["d1", "d4"]
    d1 = rows[0][1]
    assert d1["differences"]["tier"] == {"ours": "basic", "stripe": "elite"} and d1["subscription_id"] == "sub_d1"
    assert d1["stripe_event_id"].startswith("evt_reconcile_") and d1["who"]
    handler_rows = AuditLog.select().where(AuditLog.community_id == "d1", AuditLog.event_type == "subscription_updated")
    assert d1["stripe_event_id"] in {json.loads(a.event_data)["stripe_event_id"] for a in handler_rows}
    assert not r.exists(KEYS.entitlement_answer("d1")) and not r.exists(KEYS.entitlement_answer("d4"))
    assert r.exists(KEYS.entitlement_answer("d2"))  # unchanged, so still cached

    again = invoke(stripe_cli_env, "reconcile", "subscriptions", "--fix")
    assert "all 3 communities compared match Stripe" in again.stdout, again.output
    assert len(reconciled_rows()) == 2


def test_only_the_communities_asked_for(stripe_cli_env, drifted, fake_stripe):
    report = json.loads(invoke(stripe_cli_env, "reconcile", "subscriptions", "--community", "d2", "--json").stdout)
    assert [d["community_id"] for d in report] == ["d2"]
    assert [r.path for r in fake_stripe.requests] == ["/v1/subscriptions/sub_d2"]


def test_a_subscription_naming_another_community_is_not_fixed(stripe_cli_env, db, api, fake_stripe):
    apply(db, ev("checkout.session.completed", api, "m1", subscription_id="sub_m1", created=T0))
    fake_stripe.subscriptions["sub_m1"] = subscription(
        api, "someone-else", subscription_id="sub_m1", period_start=P_START
    )
    [drift] = json.loads(invoke(stripe_cli_env, "reconcile", "subscriptions", "--fix", "--json").stdout)
    assert drift["problem"] == "Stripe's metadata names community 'someone-else': not fixed automatically"
    assert not drift["fixed"] and row("m1").current_period_start is None


def test_without_a_key_it_is_one_line(cli_env):
    assert "STRIPE_API_KEY is not set" in one_line_error(invoke(cli_env, "reconcile", "subscriptions"))
