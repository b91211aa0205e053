"""billing/stripe_events.py: both Stripe API shapes read into BillingFacts. Pure: no database."""

import copy
import json

import pytest

from billing.stripe_events import (
    BillingFacts,
    UnreadableEvent,
    parse_envelope,
    read_facts,
)
from billing.vocabulary import HANDLED_TYPES
from receiver.sample_events import API_VERSIONS, EVENT_TYPES
from tests.handler_helpers import DAY, P_END, P_START, T0, ev
from tests.stripe_helpers import load_peer_events

ALL = [(t, v) for t in EVENT_TYPES for v in API_VERSIONS]
INVOICE_TYPES = ("invoice.paid", "invoice.payment_failed")
SUB_TYPES = ("customer.subscription.updated", "customer.subscription.deleted")


def obj(event):
    return event["data"]["object"]


def facts_of(event):
    """read_facts on the event as it travels: through JSON."""
    return read_facts(json.loads(json.dumps(event)))


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_common_facts(event_type, api_version):
    event = ev(event_type, api_version, tier="exclusive")
    facts = facts_of(event)
    assert isinstance(facts, BillingFacts)
    assert (facts.event_id, facts.event_type, facts.created) == (event["id"], event_type, T0)
    assert facts.object_id == obj(event)["id"]
    assert facts.community_id == "c1"
    assert facts.tier == "exclusive"
    assert facts.customer_id == "cus_1"
    assert facts.subscription_id == "sub_1"


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_no_metadata(event_type, api_version):
    facts = facts_of(ev(event_type, api_version, community_id=None, tier=None))
    assert facts.community_id is None and facts.tier is None
    assert facts.subscription_id == "sub_1"  # invoices still name their subscription


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("event_type", INVOICE_TYPES)
def test_invoice_period_is_the_subscription_lines(event_type, api_version):
    event = ev(event_type, api_version)
    invoice = obj(event)
    assert (invoice["period_start"], invoice["period_end"]) != (P_START, P_END)  # the previous period
    facts = facts_of(event)
    assert (facts.period_start, facts.period_end) == (P_START, P_END)
    assert facts.status is None


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("event_type", SUB_TYPES)
def test_subscription_period_status_prices(event_type, api_version):
    event = ev(event_type, api_version, status="past_due")
    sub = obj(event)
    if api_version == "current":  # only on the items
        assert "current_period_start" not in sub and "current_period_end" not in sub
        assert sub["items"]["data"][0]["current_period_start"] == P_START
    else:
        assert sub["current_period_start"] == P_START
    facts = facts_of(event)
    assert (facts.period_start, facts.period_end) == (P_START, P_END)
    assert facts.status == "past_due"
    assert facts.price_ids == ("price_1",)


def test_current_shape_period_spans_all_items():
    event = ev("customer.subscription.updated", "current")
    items = obj(event)["items"]["data"]
    second = copy.deepcopy(items[0])
    second.update(
        id="si_2",
        price={"id": "price_2"},
        plan={"id": "price_2"},
        current_period_start=P_START - DAY,
        current_period_end=P_END + DAY,
    )
    items.append(second)
    facts = facts_of(event)
    assert (facts.period_start, facts.period_end) == (P_START - DAY, P_END + DAY)
    assert facts.price_ids == ("price_1", "price_2")


def test_legacy_top_level_period_wins_over_items():
    event = ev("customer.subscription.updated", "2024-06-20")
    obj(event)["items"]["data"][0].update(current_period_start=1, current_period_end=2)
    assert (facts_of(event).period_start, facts_of(event).period_end) == (P_START, P_END)


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize(
    "event_type,amount_field", [("invoice.paid", "amount_paid"), ("invoice.payment_failed", "amount_due")]
)
def test_invoice_money(event_type, amount_field, api_version):
    event = ev(event_type, api_version, amount=4900, currency="eur", attempt_count=3)
    facts = facts_of(event)
    assert facts.amount == obj(event)[amount_field] == 4900
    assert (facts.currency, facts.attempt_count) == ("eur", 3)
    assert facts.price_ids == ("price_1",)


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_checkout_prices_only_when_line_items_expanded(api_version):
    event = ev("checkout.session.completed", api_version)
    assert facts_of(event).price_ids == ()
    obj(event)["line_items"] = {"object": "list", "data": [{"id": "li_1", "price": {"id": "price_9"}}]}
    facts = facts_of(event)
    assert facts.price_ids == ("price_9",)
    assert (facts.period_start, facts.status) == (None, None)
    assert (facts.amount, facts.mode, facts.payment_status) == (obj(event)["amount_total"], "subscription", "paid")


@pytest.mark.parametrize("event_type,api_version", ALL)
def test_expanded_objects(event_type, api_version):
    event = ev(event_type, api_version)
    o = obj(event)
    o["customer"] = {"id": "cus_1", "object": "customer", "email": "x@example.com"}
    if event_type == "checkout.session.completed":
        o["subscription"] = {"id": "sub_1", "object": "subscription"}
    elif api_version == "current" and event_type in INVOICE_TYPES:
        o["parent"]["subscription_details"]["subscription"] = {"id": "sub_1", "object": "subscription"}
    elif event_type in INVOICE_TYPES:
        o["subscription"] = {"id": "sub_1", "object": "subscription"}
    facts = facts_of(event)
    assert (facts.customer_id, facts.subscription_id) == ("cus_1", "sub_1")


def _proration_line(line, api_version, period):
    """A proration line made from a subscription line, for another (old) price."""
    extra = copy.deepcopy(line)
    extra.update(id="il_proration", amount=-1200, period=period)
    if api_version == "current":
        extra["parent"]["subscription_item_details"]["proration"] = True
        extra["pricing"]["price_details"]["price"] = "price_old"
    else:
        extra.update(proration=True, price={"id": "price_old"}, plan={"id": "price_old"})
    return extra


def _one_off_line(line, api_version, period):
    extra = copy.deepcopy(line)
    extra.update(id="il_oneoff", period=period, subscription=None)
    if api_version == "current":
        extra["parent"] = {
            "type": "invoice_item_details",
            "subscription_item_details": None,
            "invoice_item_details": {"invoice_item": "ii_1", "proration": False, "subscription": None},
        }
        extra["pricing"]["price_details"]["price"] = "price_setup"
    else:
        extra.update(type="invoiceitem", price={"id": "price_setup"}, plan=None, subscription_item=None)
    return extra


@pytest.mark.parametrize("api_version", API_VERSIONS)
@pytest.mark.parametrize("event_type", INVOICE_TYPES)
def test_invoice_picks_the_subscription_line(event_type, api_version):
    event = ev(event_type, api_version)
    lines = obj(event)["lines"]["data"]
    later = {"start": P_START + DAY, "end": P_END + 5 * DAY}  # later than the real line: not a tie-break win
    lines.insert(0, _proration_line(lines[0], api_version, later))
    lines.insert(0, _one_off_line(lines[1], api_version, later))
    facts = facts_of(event)
    assert (facts.period_start, facts.period_end) == (P_START, P_END)
    assert facts.price_ids == ("price_1",)  # the old price of a proration must not decide a tier


@pytest.mark.parametrize("api_version", API_VERSIONS)
def test_invoice_without_subscription_line(api_version):
    event = ev("invoice.paid", api_version, community_id=None)
    lines = obj(event)["lines"]["data"]
    lines[:] = [_one_off_line(lines[0], api_version, {"start": T0, "end": T0})]
    facts = facts_of(event)
    assert (facts.period_start, facts.period_end) == (None, None)
    assert facts.price_ids == ("price_setup",)


def test_metadata_values_are_read_as_text():
    event = ev("customer.subscription.updated", "current")
    obj(event)["metadata"] = {"community_id": 42, "tier": True}
    facts = facts_of(event)
    assert (facts.community_id, facts.tier) == ("42", None)


# --- parse_envelope / unreadable objects ------------------------------------------------------


def test_parse_envelope_accepts_bytes_and_text():
    body = json.dumps({"id": "evt_1", "type": "invoice.paid", "data": {}})
    assert parse_envelope(body)["id"] == "evt_1"
    assert parse_envelope(body.encode())["type"] == "invoice.paid"


@pytest.mark.parametrize(
    "body,message",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"", "not JSON"),
        (b"[" * 200_000, "not JSON"),  # deeper than the parser can go: still a ValueError
        (b'[{"id": "evt_1", "type": "invoice.paid"}]', "not a JSON object"),
        (b'"evt_1"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'{"type": "invoice.paid"}', "'id'"),
        (b'{"id": "", "type": "invoice.paid"}', "'id'"),
        (b'{"id": 123, "type": "invoice.paid"}', "'id'"),
        (b'{"id": "evt_1"}', "'type'"),
        (b'{"id": "evt_1", "type": null}', "'type'"),
    ],
)
def test_parse_envelope_errors(body, message):
    with pytest.raises(ValueError, match=message):
        parse_envelope(body)


@pytest.mark.parametrize("event_type", HANDLED_TYPES)
@pytest.mark.parametrize("data", [{"object": "oops"}, {"object": None}, {"object": []}, {}, "oops", None])
def test_unreadable_object(event_type, data):
    event = {"id": "evt_1", "type": event_type, "created": T0, "data": data}
    with pytest.raises(UnreadableEvent):
        read_facts(event)
    assert issubclass(UnreadableEvent, ValueError)


# --- the peer corpus ----------------------------------------------------------------------------

PEERS = load_peer_events()
HANDLED_PEERS = [(name, raw) for name, raw in PEERS if json.loads(raw).get("type") in HANDLED_TYPES]


def test_peer_corpus_has_handled_events():
    assert len(HANDLED_PEERS) >= 10


@pytest.mark.parametrize("name,raw", PEERS, ids=[name for name, _ in PEERS])
def test_peer_envelope_parses(name, raw):
    event = parse_envelope(raw)
    assert isinstance(event["id"], str) and isinstance(event["type"], str)


def _is(value, kind):
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


@pytest.mark.parametrize("name,raw", HANDLED_PEERS, ids=[name for name, _ in HANDLED_PEERS])
def test_peer_facts_are_sane(name, raw):
    event = parse_envelope(raw)
    facts = read_facts(event)
    assert (facts.event_id, facts.event_type) == (event["id"], event["type"])
    assert isinstance(facts.created, int) and facts.created > 1_300_000_000
    for field in ("object_id", "community_id", "tier", "customer_id", "subscription_id", "status", "currency"):
        value = getattr(facts, field)
        assert _is(value, str) and value != "", (field, value)
    for field in ("period_start", "period_end", "amount", "attempt_count"):
        assert _is(getattr(facts, field), int), field
    if facts.period_start is not None:
        assert facts.period_end is not None and facts.period_start <= facts.period_end
    assert isinstance(facts.price_ids, tuple) and all(isinstance(p, str) and p for p in facts.price_ids)
    if event["type"] in SUB_TYPES:
        assert facts.subscription_id == event["data"]["object"]["id"] and facts.status
    if event["type"] in INVOICE_TYPES:
        assert facts.currency and facts.amount is not None
