"""Fuzzing the handlers through consumer.batch.apply_batch, on SQLite and PostgreSQL: realistic events of every
handled type (both API shapes, and the peer projects' captures) with fields deleted, nulled or replaced by
arbitrary JSON at arbitrary paths. Whatever the payload, apply_batch returns an outcome for it (never raises),
the event's webhook_events row says that outcome, a failure leaves no trace of a half-applied effect, and
every subscription row stays one the API can serve."""

from __future__ import annotations

import copy
import json
import time

import hypothesis
from hypothesis import given
from hypothesis import strategies as st

from billing import community
from billing.stripe_events import event_created
from billing.vocabulary import HANDLED_TYPES
from consumer.batch import apply_batch
from consumer.entries import Entry, PriorState
from models.db import database_proxy, is_postgres
from models.tables import AuditLog, DeferredEvent, Subscription, WebhookEvent
from receiver.sample_events import build_event
from tests.fuzz.strategies import (
    BASE_EVENTS,
    DAY,
    T0,
    TEXT,
    dumps,
    fuzz_settings,
    mutated_events,
)
from tests.handler_helpers import POLICY, TIERS, entry_for

STATUSES = {"active", "past_due", "canceled", "trialing", "unpaid"}  # CONTRACT.md, Domain
OUTCOMES = {"processed", "ignored", "stale", "deferred", "duplicate", "failed"}
COMPANION = "c9"  # a well-formed event in the same batch: whatever the fuzzed one does, it is applied


def realistic(event_type, api, event_id, created, community_id="c1", subscription_id="sub_1", invoice_id="in_1", **kw):
    return build_event(
        event_type,
        community_id,
        api_version=api,
        created=created,
        event_id=event_id,
        customer_id="cus_1",
        subscription_id=subscription_id,
        price_id="price_1",
        invoice_id=invoice_id,
        period_start=T0 + DAY,
        period_end=T0 + 31 * DAY,
        **kw,
    )


# What the community already has when the fuzzed event arrives: (event type, extra build_event arguments).
HISTORIES = {
    "nothing": [],
    "active": [("checkout.session.completed", {})],
    "past_due": [("checkout.session.completed", {}), ("invoice.payment_failed", {"invoice_id": "in_0"})],
    "canceled": [("checkout.session.completed", {}), ("customer.subscription.deleted", {})],
    "unpaid checkout": [("checkout.session.completed", {"payment_status": "unpaid"})],
    "another subscription": [("checkout.session.completed", {"subscription_id": "sub_0"})],
    "deferred for sub_1": [("invoice.paid", {"community_id": None})],
}


def reset_tables() -> None:
    for table in (Subscription, WebhookEvent, AuditLog, DeferredEvent):
        table.delete().execute()


def state(exclude_community: str | None = COMPANION) -> dict:
    """Everything a handler may change, but the companion community's."""
    subs = Subscription.select().order_by(Subscription.community_id)
    audit = AuditLog.select().order_by(AuditLog.id)
    return {
        "subscriptions": [row for row in subs.dicts() if row["community_id"] != exclude_community],
        "audit": [row for row in audit.dicts() if row["community_id"] != exclude_community],
        "deferred": list(DeferredEvent.select().order_by(DeferredEvent.id).dicts()),
    }


def assert_rows_valid() -> None:
    """Every stored subscription is one the API can read and serve."""
    for row in Subscription.select():
        assert community.is_valid(row.community_id), row.community_id
        assert row.tier in TIERS, row.tier
        assert row.status in STATUSES, row.status


def unstorable_on_postgresql(entry: Entry) -> bool:
    """PostgreSQL text holds no NUL: such an event id or type cannot even be recorded as failed (it fails at
    every delivery, then goes to the dead-letter stream)."""
    return is_postgres(database_proxy.obj) and "\x00" in entry.event_id + entry.event_type


def assert_recorded(outcome) -> None:
    """The event's webhook_events row says what apply_batch said."""
    if unstorable_on_postgresql(outcome.entry):  # not even a query can name it
        assert outcome.outcome == "failed"
        return
    row = WebhookEvent.get_or_none(WebhookEvent.stripe_event_id == outcome.entry.event_id)
    assert row is not None, f"no webhook_events row for {outcome.entry.event_id!r} ({outcome.outcome})"
    if outcome.outcome == "failed":
        assert row.status == "failed" and row.error_message, (row.status, row.error_message)
        assert row.error_message.startswith(outcome.error[:50])
    else:
        assert (row.status, row.error_message) == (outcome.outcome, None)
        assert row.community_id == outcome.community_id
        assert row.processed_at is not None


def apply_one_batch(db, events_or_entries) -> list:
    entries = [e if isinstance(e, Entry) else entry_for(e, dumps(e)) for e in events_or_entries]
    outcomes = apply_batch(db, entries, PriorState(), POLICY, max_deliveries=5)
    assert not db.in_transaction()
    assert [o.entry for o in outcomes] == entries
    return outcomes


def check_outcome(outcome, before: dict, after: dict) -> None:
    hypothesis.event(f"outcome: {outcome.outcome}")
    assert outcome.outcome in OUTCOMES, outcome
    assert outcome.outcome != "duplicate"  # a fresh event id
    assert_recorded(outcome)
    if outcome.outcome == "failed":
        assert after == before, "a failed event left part of its effect behind"
    elif outcome.outcome in ("ignored", "deferred"):
        assert after["subscriptions"] == before["subscriptions"] and after["audit"] == before["audit"]
    elif outcome.outcome == "stale":  # changes nothing but a later period and what is known paid
        lasting = ("current_period_start", "current_period_end", "last_paid_invoice_id", "updated_at")
        assert [{k: v for k, v in row.items() if k not in lasting} for row in after["subscriptions"]] == [
            {k: v for k, v in row.items() if k not in lasting} for row in before["subscriptions"]
        ]
        assert after["audit"] == before["audit"]
    if outcome.outcome == "deferred":
        assert DeferredEvent.get_or_none(DeferredEvent.stripe_event_id == outcome.entry.event_id) is not None
    if outcome.outcome == "processed":
        assert outcome.community_id is not None and community.is_valid(outcome.community_id)
    if outcome.entry.event_type not in HANDLED_TYPES and not unstorable_on_postgresql(outcome.entry):
        assert outcome.outcome == "ignored"


@st.composite
def fuzzed_batches(draw):
    api = draw(st.sampled_from(["2024-06-20", "current"]))
    history = draw(st.sampled_from(sorted(HISTORIES)))
    event = draw(mutated_events(max_mutations=5))
    event["id"] = "evt_fuzz_" + draw(TEXT)  # any text the receiver queues: NUL, emoji, spaces, ...
    if draw(st.integers(0, 9)) == 0:  # now and then a type we do not handle, however odd: ignored
        event["type"] = draw(
            st.one_of(
                TEXT.filter(bool),
                st.sampled_from(["invoice.created", "invoice.paid\x00", "checkout.session", "x" * 300]),
            )
        )
    with_companion = draw(st.booleans())
    return api, history, event, with_companion


@fuzz_settings(max_examples=300)
@given(fuzzed_batches())
def test_a_fuzzed_event_is_applied_whole_or_not_at_all(db, batch):
    api, history, event, with_companion = batch
    reset_tables()
    past = [
        realistic(event_type, api, f"evt_history_{i}", T0 - 600 + i, **kw)
        for i, (event_type, kw) in enumerate(HISTORIES[history])
    ]
    if past:
        assert {o.outcome for o in apply_one_batch(db, past)} <= {"processed", "deferred"}
    before = state()

    batch = [event]
    if with_companion:
        batch.append(
            realistic(
                "checkout.session.completed", api, "evt_companion", T0, community_id=COMPANION, subscription_id="sub_9"
            )
        )
    outcomes = apply_one_batch(db, batch)

    check_outcome(outcomes[0], before, state())
    if with_companion and outcomes[0].community_id != COMPANION:  # a failing event never blocks the others
        assert (outcomes[1].outcome, outcomes[1].community_id) == ("processed", COMPANION)
    assert_rows_valid()


@st.composite
def event_sequences(draw):
    """Events of one community's one subscription (c1, sub_1) in any order, some of them mangled."""
    events = []
    for i in range(draw(st.integers(1, 8))):
        event = copy.deepcopy(draw(st.sampled_from(BASE_EVENTS)))
        event["created"] = T0 + draw(st.integers(-3, 40)) * 60
        if draw(st.booleans()):
            event = draw(mutated_events(bases=[event], max_mutations=2))
        event["id"] = f"evt_seq_{i}"
        events.append(event)
    return events


@fuzz_settings(max_examples=200)
@given(event_sequences())
def test_a_sequence_of_fuzzed_events_leaves_a_valid_subscription(db, events):
    reset_tables()
    for event in events:
        before = state(exclude_community=None)
        [outcome] = apply_one_batch(db, [event])
        after = state(exclude_community=None)
        check_outcome(outcome, before, after)
        assert_rows_valid()
        assert_only_forward(before["subscriptions"], after["subscriptions"])


def assert_only_forward(before: list[dict], after: list[dict]) -> None:
    """Whatever the order and content of the events, a subscription's period and last applied event time never
    go back (a community that moves to another subscription starts afresh)."""
    now = {row["community_id"]: row for row in after}
    for old in before:
        new = now[old["community_id"]]  # rows are never deleted
        if new["stripe_subscription_id"] != old["stripe_subscription_id"]:
            continue
        assert new["last_event_created"] >= old["last_event_created"]
        if old["current_period_end"] is not None:
            assert new["current_period_end"] is not None and new["current_period_end"] >= old["current_period_end"]


def test_the_bases_cover_every_handled_type():
    assert {event["type"] for event in BASE_EVENTS} == set(HANDLED_TYPES)
    assert all(json.loads(dumps(event)) == event for event in BASE_EVENTS)


# Stream fields as Redis holds them: the receiver's, or anything someone XADDed by hand (or an older release).
FIELD_TEXT = st.one_of(
    TEXT,
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e400",
            "inf",
            "nan",
            "1e300",
            "9" * 30,
            "1.5",
            "99999999999999999999",
            "-99999999999999999999",
        ]
    ),
    st.integers().map(str),
)


@st.composite
def stream_fields(draw) -> dict[bytes, bytes]:
    base = draw(mutated_events(max_mutations=2))
    fields = {
        b"event_id": ("evt_raw_" + draw(TEXT)).encode(),
        b"event_type": base["type"].encode(),
        b"created": str(event_created(base)).encode(),
        b"payload": dumps(base),
        b"received_at": str(int(time.time() * 1000)).encode(),
    }
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del fields[name]
        else:
            fields[name] = draw(st.one_of(FIELD_TEXT.map(str.encode), st.binary(max_size=20)))
    return fields


@fuzz_settings(max_examples=150)
@given(stream_fields(), st.integers(1, 2**40))
def test_any_stream_entry_is_an_outcome_never_an_exception(db, fields, entry_ms):
    """Entries not written by the receiver (by hand, by an older release): whatever their fields hold,
    apply_batch answers with an outcome."""
    reset_tables()
    entry = Entry.from_fields(f"{entry_ms}-0", fields)
    [outcome] = apply_batch(db, [entry], PriorState(), POLICY, max_deliveries=5)
    assert not db.in_transaction()
    assert outcome.outcome in OUTCOMES - {"duplicate"}
    assert_rows_valid()
