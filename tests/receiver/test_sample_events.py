import json
import re

import pytest

from receiver.sample_events import (
    API_VERSIONS,
    CURRENT_API_VERSION,
    EVENT_TYPES,
    LEGACY_API_VERSION,
    build_event,
)

DAY = 86_400
T0 = 1_760_000_000
ALL = [(t, v) for t in EVENT_TYPES for v in API_VERSIONS]
SUB_TYPES = ("customer.subscription.updated", "customer.subscription.deleted")
INVOICE_TYPES = ("invoice.paid", "invoice.payment_failed")


def obj(event):
    return event["data"]["object"]


def all_metadata(event):
    """Every dict stored under a ``metadata`` key anywhere in the event."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "metadata" and isinstance(value, dict):
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(event)
    return found


def test_constants():
    assert LEGACY_API_VERSION == "2024-06-20"
    assert API_VERSIONS == ("2024-06-20", "current")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.[a-z]+", CURRENT_API_VERSION)
    assert CURRENT_API_VERSION > "2025-03-31.basil"
    assert len(EVENT_TYPES) == 7


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_envelope(event_type, api_version):
    ev = build_event(event_type, "c1", api_version=api_version, created=T0)
    assert re.fullmatch(r"evt_[A-Za-z0-9]{24}", ev["id"])
    assert ev["object"] == "event"
    assert ev["type"] == event_type
    assert ev["created"] == T0
    assert ev["livemode"] is False
    assert ev["pending_webhooks"] == 1
    assert ev["request"]["id"].startswith("req_") and ev["request"]["idempotency_key"]
    expected = LEGACY_API_VERSION if api_version == LEGACY_API_VERSION else CURRENT_API_VERSION
    assert ev["api_version"] == expected
    assert ("previous_attributes" in ev["data"]) == (event_type == "customer.subscription.updated")
    assert json.loads(json.dumps(ev)) == ev
    assert obj(ev)["livemode"] is False


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_metadata_and_ids_are_passed_through(event_type, api_version):
    ev = build_event(
        event_type,
        "c42",
        tier="basic",
        api_version=api_version,
        created=T0,
        event_id="evt_fixed",
        customer_id="cus_X",
        subscription_id="sub_X",
        price_id="price_X",
    )
    assert ev["id"] == "evt_fixed"
    o = obj(ev)
    assert o["customer"] == "cus_X"
    if event_type == "checkout.session.completed":
        md = o["metadata"]
    elif event_type in INVOICE_TYPES:
        legacy = api_version == LEGACY_API_VERSION
        md = (o["subscription_details"] if legacy else o["parent"]["subscription_details"])["metadata"]
    else:
        md = o["metadata"]
    assert md == {"community_id": "c42", "tier": "basic"}


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_community_none_omits_community_id(event_type, api_version):
    ev = build_event(event_type, None, api_version=api_version)
    mds = all_metadata(ev)
    assert mds and all("community_id" not in md for md in mds)
    assert any(md.get("tier") == "premium" for md in mds)
    if event_type == "checkout.session.completed":
        assert obj(ev)["client_reference_id"] is None


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_tier_none_omits_tier(event_type, api_version):
    ev = build_event(event_type, None, tier=None, api_version=api_version)
    assert all(md == {} for md in all_metadata(ev))


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_checkout_session(api_version):
    s = obj(
        build_event("checkout.session.completed", "c1", api_version=api_version, subscription_id="sub_X", amount=500)
    )
    assert s["object"] == "checkout.session" and s["id"].startswith("cs_test_")
    assert s["mode"] == "subscription"
    assert s["payment_status"] == "paid" and s["status"] == "complete"
    assert s["subscription"] == "sub_X"
    assert s["client_reference_id"] == "c1"
    assert s["amount_total"] == 500
    assert s["ui_mode"] == ("hosted" if api_version == LEGACY_API_VERSION else "hosted_page")


@pytest.mark.parametrize("event_type", SUB_TYPES)
def test_subscription_legacy_shape(event_type):
    sub = obj(
        build_event(
            event_type, "c1", api_version="2024-06-20", price_id="price_X", period_start=T0, period_end=T0 + 31 * DAY
        )
    )
    assert sub["object"] == "subscription"
    assert sub["current_period_start"] == T0
    assert sub["current_period_end"] == T0 + 31 * DAY
    assert sub["plan"]["id"] == "price_X"
    (item,) = sub["items"]["data"]
    assert item["price"]["id"] == "price_X" and item["plan"]["id"] == "price_X"
    assert "current_period_start" not in item and "current_period_end" not in item


@pytest.mark.parametrize("event_type", SUB_TYPES)
def test_subscription_current_shape(event_type):
    sub = obj(build_event(event_type, "c1", price_id="price_X", period_start=T0, period_end=T0 + 31 * DAY))
    assert "current_period_start" not in sub and "current_period_end" not in sub
    assert "plan" not in sub
    (item,) = sub["items"]["data"]
    assert item["price"]["id"] == "price_X"
    assert item["current_period_start"] == T0
    assert item["current_period_end"] == T0 + 31 * DAY


def test_subscription_status_defaults_and_override():
    assert obj(build_event("customer.subscription.updated", "c1"))["status"] == "active"
    deleted = obj(build_event("customer.subscription.deleted", "c1", created=T0))
    assert deleted["status"] == "canceled" and deleted["ended_at"] == T0
    ev = build_event("customer.subscription.updated", "c1", status="past_due")
    assert obj(ev)["status"] == "past_due"
    assert ev["data"]["previous_attributes"] == {"status": "active"}


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_default_periods(api_version):
    sub = obj(build_event("customer.subscription.updated", "c1", api_version=api_version, created=T0))
    where = sub if api_version == LEGACY_API_VERSION else sub["items"]["data"][0]
    assert where["current_period_start"] == T0
    assert where["current_period_end"] == T0 + 30 * DAY


def test_renewal_previous_attributes():
    legacy = build_event("customer.subscription.updated", "c1", api_version="2024-06-20", period_start=T0)["data"][
        "previous_attributes"
    ]
    assert legacy["current_period_end"] == T0
    current = build_event("customer.subscription.updated", "c1", period_start=T0)["data"]["previous_attributes"]
    assert "current_period_end" not in current
    assert current["items"]["data"][0]["current_period_end"] == T0


@pytest.mark.parametrize("event_type", INVOICE_TYPES)
def test_invoice_legacy_shape(event_type):
    inv = obj(
        build_event(
            event_type,
            "c1",
            api_version="2024-06-20",
            subscription_id="sub_X",
            price_id="price_X",
            period_start=T0,
            period_end=T0 + 30 * DAY,
        )
    )
    assert inv["object"] == "invoice"
    assert inv["subscription"] == "sub_X"
    assert inv["subscription_details"]["metadata"] == {"community_id": "c1", "tier": "premium"}
    assert "parent" not in inv
    (line,) = inv["lines"]["data"]
    assert line["type"] == "subscription"
    assert line["subscription"] == "sub_X"
    assert line["price"]["id"] == "price_X" and line["plan"]["id"] == "price_X"
    assert "parent" not in line and "pricing" not in line


@pytest.mark.parametrize("event_type", INVOICE_TYPES)
def test_invoice_current_shape(event_type):
    inv = obj(
        build_event(
            event_type, "c1", subscription_id="sub_X", price_id="price_X", period_start=T0, period_end=T0 + 30 * DAY
        )
    )
    assert "subscription" not in inv and "subscription_details" not in inv and "paid" not in inv
    parent = inv["parent"]
    assert parent["type"] == "subscription_details" and parent["quote_details"] is None
    assert parent["subscription_details"]["subscription"] == "sub_X"
    assert parent["subscription_details"]["metadata"] == {"community_id": "c1", "tier": "premium"}
    (line,) = inv["lines"]["data"]
    assert "price" not in line and "plan" not in line and "type" not in line
    lp = line["parent"]
    assert lp["type"] == "subscription_item_details" and lp["invoice_item_details"] is None
    assert lp["subscription_item_details"]["subscription"] == "sub_X"
    assert lp["subscription_item_details"]["subscription_item"].startswith("si_")
    assert lp["subscription_item_details"]["proration"] is False
    assert line["pricing"]["type"] == "price_details"
    assert line["pricing"]["price_details"]["price"] == "price_X"
    assert line["pricing"]["price_details"]["product"].startswith("prod_")


@pytest.mark.parametrize("event_type,api_version", [(t, v) for t in INVOICE_TYPES for v in API_VERSIONS])
def test_invoice_line_period_is_new_period(event_type, api_version):
    inv = obj(build_event(event_type, "c1", api_version=api_version, period_start=T0, period_end=T0 + 30 * DAY))
    assert (inv["period_start"], inv["period_end"]) == (T0 - 30 * DAY, T0)
    line = inv["lines"]["data"][0]
    assert line["period"] == {"start": T0, "end": T0 + 30 * DAY}
    assert line["period"]["end"] != inv["period_end"]


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_invoice_paid_vs_failed(api_version):
    paid = obj(build_event("invoice.paid", "c1", api_version=api_version, amount=1234))
    assert paid["status"] == "paid" and paid["amount_paid"] == 1234
    assert paid["attempt_count"] == 1
    failed = obj(
        build_event("invoice.payment_failed", "c1", api_version=api_version, amount=1234, attempt_count=3, created=T0)
    )
    assert failed["status"] == "open"
    assert failed["amount_paid"] == 0 and failed["amount_due"] == 1234
    assert failed["attempt_count"] == 3
    assert failed["next_payment_attempt"] > T0
    if api_version == LEGACY_API_VERSION:
        assert paid["paid"] is True and failed["paid"] is False


def test_random_ids_differ():
    a, b = (build_event("invoice.paid", "c1") for _ in range(2))
    assert a["id"] != b["id"] and obj(a)["id"] != obj(b)["id"]
    assert re.fullmatch(r"in_[A-Za-z0-9]{24}", obj(a)["id"])
    assert re.fullmatch(r"sub_[A-Za-z0-9]{24}", obj(a)["parent"]["subscription_details"]["subscription"])


def test_unknown_event_type_raises():
    with pytest.raises(ValueError, match="event type"):
        build_event("charge.succeeded", "c1")


@pytest.mark.parametrize("bad", ["2025-03-31.basil", "latest", ""])
def test_unknown_api_version_raises(bad):
    with pytest.raises(ValueError, match="api_version"):
        build_event("invoice.paid", "c1", api_version=bad)
