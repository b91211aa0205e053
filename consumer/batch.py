"""Applying a batch of stream entries exactly once: one transaction per batch, a savepoint per event.

The event's `webhook_events` row and its effects commit together, so a crash before the commit
leaves nothing (the entry is redelivered and applied once) and a crash after it leaves a row that
the redelivery recognises (acknowledged with no second effect)."""
from __future__ import annotations

import dataclasses
import logging

import peewee

from consumer import faults
from consumer.handlers import Policy, apply_event
from consumer.stream import Entry, Settlement
from models.db import OUTAGE_ERRORS, database_proxy, is_postgres, write_transaction
from models.stripe_events import parse_envelope
from models.tables import WebhookEvent, from_epoch, utcnow

log = logging.getLogger(__name__)

# A row in one of these states means the event's effects are committed: never apply it again.
FINAL_STATUSES = ("processed", "ignored", "stale")


@dataclasses.dataclass(frozen=True)
class Outcome:
    entry: Entry
    outcome: str  # processed, ignored, stale, duplicate or failed
    community_id: str | None = None
    error: str | None = None

    @property
    def settled(self) -> bool:
        return self.outcome != "failed"


def apply_batch(db: peewee.Database, entries: list[Entry], already_processed: set[str], policy: Policy) -> list[Outcome]:
    """Apply `entries` in one transaction. Raises an OUTAGE_ERRORS error (nothing committed) when the
    database is unavailable; any other error is the event's own and is recorded as `failed`."""
    outcomes = []
    with write_transaction(db):
        for entry in entries:
            if entry.event_id in already_processed:
                outcomes.append(Outcome(entry, "duplicate"))
                continue
            try:
                with db.atomic():  # a savepoint: a failing event never rolls back the others
                    outcomes.append(_apply_entry(entry, policy))
            except OUTAGE_ERRORS:
                raise
            except Exception as exc:
                log.exception("event %s (%s) failed", entry.event_id, entry.event_type)
                error = f"{type(exc).__name__}: {exc}"
                try:
                    with db.atomic():  # a savepoint too: on PostgreSQL a failed statement would abort the batch
                        _record_failure(entry, error)
                except OUTAGE_ERRORS:
                    raise
                except peewee.DatabaseError:  # e.g. an event id longer than the column: left unrecorded
                    log.exception("could not record the failure of event %s", entry.event_id)
                outcomes.append(Outcome(entry, "failed", error=error))
        faults.checkpoint("before_commit")
    faults.checkpoint("after_commit")
    return outcomes


def settlement_of(outcomes: list[Outcome]) -> Settlement:
    settled = [o for o in outcomes if o.settled]
    return Settlement(
        ack_ids=tuple(o.entry.entry_id for o in settled),
        processed_event_ids=tuple(dict.fromkeys(o.entry.event_id for o in settled if o.entry.event_id)),
        changed_communities=tuple(dict.fromkeys(o.community_id for o in settled if o.community_id)),
    )


def _apply_entry(entry: Entry, policy: Policy) -> Outcome:
    if not entry.event_id:
        raise ValueError(f"stream entry {entry.entry_id} has no event_id")
    if not _claim(entry):
        return Outcome(entry, "duplicate")
    result = apply_event(parse_envelope(entry.payload), policy)
    (WebhookEvent.update(status=result.outcome, error_message=None, processed_at=utcnow())
     .where(WebhookEvent.stripe_event_id == entry.event_id).execute())
    changed = result.community_id if result.outcome == "processed" else None
    return Outcome(entry, result.outcome, community_id=changed)


def _claim(entry: Entry) -> bool:
    """Insert the event's row, or take over a row left `failed`/`dead`. False if already applied.
    On PostgreSQL a concurrent consumer's insert of the same id waits here for our commit."""
    try:
        with database_proxy.atomic():
            WebhookEvent.insert(
                stripe_event_id=entry.event_id,
                event_type=entry.event_type[:255],
                status="processed",  # rewritten with the real outcome before the commit
                received_at=from_epoch(entry.received_at_ms / 1000),
            ).execute()
        return True
    except peewee.IntegrityError:
        query = WebhookEvent.select(WebhookEvent.status).where(WebhookEvent.stripe_event_id == entry.event_id)
        if is_postgres(database_proxy.obj):
            query = query.for_update()
        row = query.first()
        return row is not None and row.status not in FINAL_STATUSES


def _record_failure(entry: Entry, error: str) -> None:
    if not entry.event_id:
        return
    (WebhookEvent.insert(
        stripe_event_id=entry.event_id,
        event_type=entry.event_type[:255],
        status="failed",
        error_message=error[:4000],
        received_at=from_epoch(entry.received_at_ms / 1000),
    ).on_conflict(
        conflict_target=[WebhookEvent.stripe_event_id],
        update={WebhookEvent.status: "failed", WebhookEvent.error_message: error[:4000]},
        where=WebhookEvent.status.not_in(FINAL_STATUSES),
    ).execute())
