"""What the fuzzers (tests/fuzz/test_*_fuzz.py) found, each as the smallest example that failed, kept as a
plain test so it stays fixed whatever the fuzzers happen to draw."""

from __future__ import annotations

import json

from consumer.batch import apply_batch
from consumer.entries import Entry, Failure, PriorState
from models.db import is_postgres
from models.tables import WebhookEvent
from tests.handler_helpers import POLICY, entry_for, ev


def test_an_event_id_with_a_nul_fails_and_is_dead_lettered_never_raises(db):
    """PostgreSQL text cannot hold NUL and psycopg2 refuses it with a ValueError before sending, so recording
    the failure raised out of apply_batch: the consumer died, and again at every restart (its own pending
    entry comes first). The receiver queues such an id: a JSON string may hold \\u0000."""
    entries = [
        entry_for(ev("invoice.paid", "current", event_id="evt_\x00")),
        entry_for(ev("checkout.session.completed", "current", community_id="c9", event_id="evt_other")),
    ]
    outcomes = apply_batch(db, entries, PriorState(), POLICY, max_deliveries=5)
    if not is_postgres(db):  # SQLite stores it like any other id
        assert [o.outcome for o in outcomes] == ["processed", "processed"]
        return
    assert [o.outcome for o in outcomes] == ["failed", "processed"]  # the rest of the batch commits
    assert [hook.stripe_event_id for hook in WebhookEvent.select()] == ["evt_other"]  # no query can name it
    # Every delivery fails the same way; the fifth goes to the dead-letter stream.
    [dead] = apply_batch(
        db, entries[:1], PriorState(failures={entries[0].entry_id: Failure(4, 0)}), POLICY, max_deliveries=5
    )
    assert dead.outcome == "dead"


def test_an_entry_with_a_received_at_no_datetime_holds_is_applied_never_raises(db):
    """An entry XADDed by hand with received_at 99999999999999999999 (ms): the event failed on its row's
    received_at (OSError: value too large), then recording that failure raised the same error out of
    apply_batch, at every delivery."""
    fields = {
        b"event_id": b"evt_by_hand",
        b"event_type": b"invoice.paid",
        b"created": b"0",
        b"received_at": b"99999999999999999999",
    }
    good = ev("checkout.session.completed", "current")
    entries = [
        Entry.from_fields("1700000000000-0", {**fields, b"payload": json.dumps(good).encode()}),
        Entry.from_fields("1700000000000-1", {**fields, b"event_id": b"evt_unreadable", b"payload": b"[]"}),
    ]
    outcomes = apply_batch(db, entries, PriorState(), POLICY, max_deliveries=5)
    assert [o.outcome for o in outcomes] == ["processed", "failed"]
    rows = {hook.stripe_event_id: hook for hook in WebhookEvent.select()}
    assert (rows["evt_by_hand"].status, rows["evt_unreadable"].status) == ("processed", "failed")
    assert all(hook.received_at is not None for hook in rows.values())
