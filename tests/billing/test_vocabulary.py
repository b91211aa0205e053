"""billing.vocabulary: each word pinned to CONTRACT.md's spelling (written here from the contract, not from the
code), and each member written as its plain value wherever a string goes: str(), f-strings, JSON, log lines,
metric labels and database columns."""

from __future__ import annotations

import json
import logging

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from billing.logs import JsonFormatter
from billing.vocabulary import (
    ENDED_STATUSES,
    FAILED_OUTCOMES,
    FINAL_EVENT_STATUSES,
    HANDLED_TYPES,
    PAID_STATUSES,
    EventStatus,
    EventType,
    Outcome,
    Receipt,
    Status,
)
from models.tables import Subscription, WebhookEvent

# CONTRACT.md, Domain: "Statuses: `active`, `past_due`, `canceled`, `trialing`, `unpaid`."
CONTRACT_STATUSES = ["active", "past_due", "canceled", "trialing", "unpaid"]
# CONTRACT.md, Tables: webhook_events `status` (`processed`, `ignored`, `stale`, `deferred`, `failed`, `dead`).
CONTRACT_EVENT_STATUSES = ["processed", "ignored", "stale", "deferred", "failed", "dead"]
# CONTRACT.md, Metrics: billing_events_total{event_type,outcome} (`processed`, ..., `duplicate`, `failed`, `dead`).
CONTRACT_OUTCOMES = ["processed", "ignored", "stale", "deferred", "duplicate", "failed", "dead"]
# CONTRACT.md, HTTP: 200 {"received": true, "status": "queued" | "duplicate", ...}.
CONTRACT_RECEIPTS = ["queued", "duplicate"]
# CONTRACT.md, Domain (and the README's "Beyond the contract": the two async checkout events).
CONTRACT_EVENT_TYPES = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.subscription.updated",
    "customer.subscription.deleted",
]
ALL_MEMBERS = [*Status, *EventStatus, *Outcome, *Receipt, *EventType]


@pytest.mark.parametrize(
    "enum, words",
    [
        (Status, CONTRACT_STATUSES),
        (EventStatus, CONTRACT_EVENT_STATUSES),
        (Outcome, CONTRACT_OUTCOMES),
        (Receipt, CONTRACT_RECEIPTS),
        (EventType, CONTRACT_EVENT_TYPES),
    ],
)
def test_values_are_the_contracts_words(enum, words):
    assert [member.value for member in enum] == words


def test_groupings():
    assert set(PAID_STATUSES) == {"active", "trialing"}  # features granted, grace cleared
    assert set(ENDED_STATUSES) == {"canceled", "unpaid"}  # starter entitlements
    assert set(FINAL_EVENT_STATUSES) == {"processed", "ignored", "stale", "deferred"}  # never applied again
    assert set(FAILED_OUTCOMES) == {"failed", "dead"}  # not acknowledged as applied


def test_every_row_status_is_an_outcome_and_duplicate_is_no_row_status():
    for status in EventStatus:
        assert Outcome(status) is Outcome[status.name]
    assert Outcome.lookup(EventStatus.FAILED) is Outcome.FAILED
    assert EventStatus.lookup(Outcome.DUPLICATE) is None


def test_handled_types_are_plain_strings():
    # For click.Choice (`send`), which would offer an enum's names, and for Stripe's `types[]` parameter.
    assert list(HANDLED_TYPES) == CONTRACT_EVENT_TYPES
    assert all(type(event_type) is str for event_type in HANDLED_TYPES)


def test_lookup():
    assert Status.lookup("past_due") is Status.PAST_DUE
    assert Status.lookup("incomplete") is None  # Stripe's, not stored as such
    assert Status.lookup(None) is None
    assert Status.lookup("ACTIVE") is None  # a name is not a word


@pytest.mark.parametrize("member", ALL_MEMBERS, ids=repr)
def test_written_as_its_value(member):
    value = member.value
    assert type(value) is str
    assert member == value and hash(member) == hash(value) and {value: 1}[member] == 1
    assert str(member) == value
    assert f"{member}" == value and f"{member:>40}" == f"{value:>40}"
    assert "%s" % member == value and "{}".format(member) == value
    assert json.dumps({"status": member}) == json.dumps({"status": value})
    assert orjson.dumps({"status": member}) == orjson.dumps({"status": value})


def test_log_lines_carry_the_value():
    record = logging.LogRecord("consumer.worker", logging.INFO, __file__, 1, "%s -> %s", ("evt_1", Outcome.DEAD), None)
    record.outcome = Outcome.DEAD
    assert record.getMessage() == "evt_1 -> dead"
    assert json.loads(JsonFormatter().format(record))["outcome"] == "dead"


def test_metric_labels_carry_the_value():
    registry = CollectorRegistry()
    counter = Counter("vocabulary_test_events", "test", ["event_type", "outcome"], registry=registry)
    counter.labels(EventType.INVOICE_PAID, Outcome.DUPLICATE).inc()
    assert b'vocabulary_test_events_total{event_type="invoice.paid",outcome="duplicate"} 1.0' in generate_latest(
        registry
    )


def test_status_columns_store_the_plain_value(db):
    for field, member in ((Subscription.status, Status.PAST_DUE), (WebhookEvent.status, EventStatus.DEAD)):
        stored = field.db_value(member)
        assert type(stored) is str and stored == member.value
    Subscription.create(community_id="c1", tier="basic", status=Status.PAST_DUE)
    WebhookEvent.create(stripe_event_id="evt_1", event_type=EventType.INVOICE_PAID, status=EventStatus.DEAD)
    assert db.execute_sql("SELECT status FROM subscriptions").fetchall() == [("past_due",)]
    assert db.execute_sql("SELECT status, event_type FROM webhook_events").fetchall() == [("dead", "invoice.paid")]
    # Queries compare with members as with their words.
    assert Subscription.get(Subscription.status == Status.PAST_DUE).community_id == "c1"
    assert WebhookEvent.select().where(WebhookEvent.status.in_(FAILED_OUTCOMES)).count() == 1
