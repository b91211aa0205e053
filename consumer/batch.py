"""Applying a batch of stream entries exactly once: one transaction per batch, a savepoint per event.

The event's `webhook_events` row and its effects commit together, so a crash before the commit
leaves nothing (the entry is redelivered and applied once) and a crash after it leaves a row that
the redelivery recognises (acknowledged with no second effect)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time

import peewee

from consumer import deferred, faults
from consumer.handlers import Policy, apply_event
from consumer.stream import DeadLetter, Entry, Failure, PriorState, Settlement
from models.db import OUTAGE_ERRORS, bound_transaction, database_proxy, is_postgres, write_transaction
from models.stripe_events import parse_envelope
from models.tables import WebhookEvent, from_epoch, utcnow

log = logging.getLogger(__name__)

# A row in one of these states means the event's effects are committed: never apply it again.
FINAL_STATUSES = ("processed", "ignored", "stale", "deferred")


class BatchDeadlineExceeded(Exception):
    """The batch did not commit in time; rolled back so a reclaiming consumer never runs it twice."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    entry: Entry
    outcome: str  # processed, ignored, stale, deferred, duplicate, failed or dead
    community_id: str | None = None
    error: str | None = None
    failure: Failure | None = None  # for failed and dead: the failures so far, this one included
    seconds: float = 0.0  # time spent applying it (its savepoint, or recording its failure); not the commit


def apply_batch(db: peewee.Database, entries: list[Entry], prior: PriorState, policy: Policy,
                max_deliveries: int, deadline: float | None = None) -> list[Outcome]:
    """Apply `entries` in one transaction. Raises an OUTAGE_ERRORS error when the database is
    unavailable and BatchDeadlineExceeded past `deadline` (time.monotonic()); either way nothing is
    committed. Any other error is the event's own: recorded `failed`, or `dead` at its
    `max_deliveries`th failure."""
    outcomes = []
    with write_transaction(db):
        bound_transaction(db, deadline)  # PostgreSQL: statement, lock wait and idle limits from the deadline
        for entry in entries:
            _check(deadline)
            started = time.perf_counter()
            outcome = _apply_one(db, entry, prior, policy, max_deliveries)
            outcomes.append(dataclasses.replace(outcome, seconds=time.perf_counter() - started))
        _check(deadline)
        faults.checkpoint("before_commit")
    faults.checkpoint("after_commit")
    return outcomes


def _apply_one(db: peewee.Database, entry: Entry, prior: PriorState, policy: Policy,
               max_deliveries: int) -> Outcome:
    if entry.event_id in prior.processed_event_ids:
        return Outcome(entry, "duplicate")  # its settlement dropped the cached entitlements with the mark
    try:
        try:
            with db.atomic():  # a savepoint: a failing event never rolls back the others
                return _apply_entry(db, entry, policy)
        except peewee.IntegrityError:
            # On PostgreSQL another consumer may have created the community's row since we looked (its
            # insert won; ours waited for its commit, then failed). Once more, finding that row this time.
            with db.atomic():
                return _apply_entry(db, entry, policy)
    except OUTAGE_ERRORS:
        raise
    except Exception as exc:
        log.exception("event %s (%s) failed", entry.event_id, entry.event_type,
                      extra={"event_id": entry.event_id, "entry_id": entry.entry_id, "event_type": entry.event_type})
        return _failed(db, entry, f"{type(exc).__name__}: {exc}", prior, max_deliveries)


def settlement_of(outcomes: list[Outcome], prior: PriorState) -> Settlement:
    done = [o for o in outcomes if o.outcome not in ("failed", "dead")]
    return Settlement(
        ack_ids=tuple(o.entry.entry_id for o in done),
        processed_event_ids=tuple(dict.fromkeys(o.entry.event_id for o in done if o.entry.event_id)),
        changed_communities=tuple(dict.fromkeys(o.community_id for o in done if o.community_id)),
        failures={o.entry.entry_id: o.failure for o in outcomes if o.outcome == "failed"},
        dead=tuple(DeadLetter(o.entry, o.error, o.failure) for o in outcomes if o.outcome == "dead"),
        cleared_failures=tuple(o.entry.entry_id for o in done if o.entry.entry_id in prior.failures),
    )


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise BatchDeadlineExceeded("the batch ran past its deadline; rolled back")


def _failed(db: peewee.Database, entry: Entry, error: str, prior: PriorState, max_deliveries: int) -> Outcome:
    before = prior.failures.get(entry.entry_id)
    failure = Failure(before.count + 1, before.first_failed_ms) if before else Failure(1, int(time.time() * 1000))
    status = "dead" if failure.count >= max_deliveries else "failed"
    try:
        with db.atomic():  # a savepoint too: on PostgreSQL a failed statement would abort the batch
            _record_failure(entry, error, status)
    except OUTAGE_ERRORS:
        raise
    except (peewee.DatabaseError, ValueError):  # e.g. an event id longer than the column, or with a NUL
        # (psycopg2 refuses NUL before sending: a ValueError): left unrecorded, dead-lettered in time.
        log.exception("could not record the failure of event %r", entry.event_id)
    return Outcome(entry, status, error=error, failure=failure)


def _apply_entry(db: peewee.Database, entry: Entry, policy: Policy) -> Outcome:
    if not entry.event_id:
        raise ValueError(f"stream entry {entry.entry_id} has no event_id")
    claimed, applied_to = _claim(entry)
    if not claimed:  # applied before: drop the cache again, the crash may have come before the first drop
        return Outcome(entry, "duplicate", community_id=applied_to)
    event = parse_envelope(entry.payload)
    result = apply_event(event, policy)
    if result.outcome == "deferred":
        # Decided again under the subscription's lock: a consumer may have linked it since we looked.
        deferred.lock_subscription(db, result.subscription_id)
        result = apply_event(event, policy)
        if result.outcome == "deferred":
            deferred.defer(entry.event_id, entry.event_type, result.subscription_id, entry.created, entry.payload)
    if result.linked_subscription_id:
        deferred.apply_deferred(db, result.linked_subscription_id, lambda waiting: apply_event(waiting, policy))
    changed = result.community_id if result.outcome == "processed" else None
    (WebhookEvent.update(status=result.outcome, error_message=None, processed_at=utcnow(), community_id=changed)
     .where(WebhookEvent.stripe_event_id == entry.event_id).execute())
    return Outcome(entry, result.outcome, community_id=changed)


def _claim(entry: Entry) -> tuple[bool, str | None]:
    """Insert the event's row, or take over a row left `failed`/`dead`: (True, None). (False, the community
    it changed) if already applied. On PostgreSQL a concurrent consumer's insert of the same id waits here
    for our commit."""
    try:
        with database_proxy.atomic():
            WebhookEvent.insert(
                stripe_event_id=entry.event_id,
                event_type=entry.event_type[:255],
                status="processed",  # rewritten with the real outcome before the commit
                received_at=_received_at(entry),
            ).execute()
        return True, None
    except peewee.IntegrityError:
        query = (WebhookEvent.select(WebhookEvent.status, WebhookEvent.community_id)
                 .where(WebhookEvent.stripe_event_id == entry.event_id))
        if is_postgres(database_proxy.obj):
            query = query.for_update()
        row = query.first()
        if row is not None and row.status in FINAL_STATUSES:
            return False, row.community_id
        return row is not None, None


def _received_at(entry: Entry) -> dt.datetime:
    """When the receiver took the event; now for an entry whose `received_at` no datetime holds (an entry
    XADDed by hand), which would otherwise fail the event and then the recording of its failure."""
    try:
        return from_epoch(entry.received_at_ms / 1000)
    except (OverflowError, ValueError, OSError):
        return utcnow()


def _record_failure(entry: Entry, error: str, status: str) -> None:
    if not entry.event_id:
        return
    (WebhookEvent.insert(
        stripe_event_id=entry.event_id,
        event_type=entry.event_type[:255],
        status=status,
        error_message=error[:4000],
        received_at=_received_at(entry),
    ).on_conflict(
        conflict_target=[WebhookEvent.stripe_event_id],
        update={WebhookEvent.status: status, WebhookEvent.error_message: error[:4000]},
        where=WebhookEvent.status.not_in(FINAL_STATUSES),
    ).execute())
