"""Applying a batch of stream entries exactly once, as a handful of set-based statements in one transaction.

1. claim: the batch's event rows in one INSERT ... ON CONFLICT DO NOTHING RETURNING. An id not returned is
   already applied (a duplicate: acknowledged, its community's cache dropped again) or a row left `failed` or
   `dead`, which this batch takes over. On PostgreSQL a concurrent consumer's insert of the same id waits for
   our commit.
2. load: on PostgreSQL, advisory locks on every community and subscription the batch names, in one fixed
   order (so two consumers never deadlock, and one creating a community's row never misses the other's);
   then every subscription the batch touches in one SELECT (FOR UPDATE), and, once an event links a
   subscription, the events deferred for the batch's subscriptions in one more.
3. apply in memory, in stream order (consumer/handlers.py: pure functions; a handler that raises fails only
   its own event, and touched nothing).
4. write: changed subscriptions in one upsert, audit rows in one insert, deferred events in one insert and
   one delete, the events' outcomes in one upsert.

The event rows and their effects commit together, so a crash before the commit leaves nothing (the entries
are redelivered and applied once) and a crash after it leaves rows the redelivery recognises. If a set
statement fails (a value too long for its column, say), the batch's events are applied again one by one, each
in its own savepoint, so one bad row never blocks the rest."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TypedDict, TypeVar, cast

import peewee

from billing.clock import from_epoch, utcnow
from billing.stripe_events import BillingFacts, parse_envelope
from billing.vocabulary import FAILED_OUTCOMES, FINAL_EVENT_STATUSES, EventStatus, Outcome
from consumer import faults
from consumer.entries import DeadLetter, Entry, Failure, PriorState, Settlement
from consumer.handlers import AuditRecord, Policy, Result, SubState, apply_facts, lookup_key, read
from models.db import OUTAGE_ERRORS, bound_transaction, is_postgres, write_transaction
from models.tables import AuditLog, DeferredEvent, Subscription, WebhookEvent

log = logging.getLogger(__name__)

CHUNK = 500  # rows per multi-row statement: far below SQLite's and PostgreSQL's limits on parameters
# Subscription columns an upsert writes (created_at only when the row is new).
_SUB_FIELDS = (
    "tier",
    "status",
    "stripe_customer_id",
    "stripe_subscription_id",
    "grace_until",
    "current_period_start",
    "current_period_end",
    "last_event_created",
    "last_paid_invoice_id",
    "updated_at",
)
_T = TypeVar("_T")


class BatchDeadlineExceeded(Exception):
    """The batch did not commit in time; rolled back so a reclaiming consumer never runs it twice."""


# Errors that end the whole batch (rolled back, retried later); any other error is one event's or one row's.
_FATAL = (*OUTAGE_ERRORS, BatchDeadlineExceeded)


@dataclasses.dataclass(frozen=True)
class EntryOutcome:
    """What became of one stream entry of the batch."""

    entry: Entry
    outcome: Outcome
    community_id: str | None = None
    error: str | None = None
    failure: Failure | None = None  # for failed and dead: the failures so far, this one included
    seconds: float = 0.0  # the batch's time to apply, per event; not the commit


def apply_batch(
    db: peewee.Database,
    entries: list[Entry],
    prior: PriorState,
    policy: Policy,
    max_deliveries: int,
    deadline: float | None = None,
) -> list[EntryOutcome]:
    """Apply `entries` in one transaction; their outcomes, in order. Raises an OUTAGE_ERRORS error when the
    database is unavailable and BatchDeadlineExceeded past `deadline` (time.monotonic()); either way nothing
    is committed. Any other error is the event's own: recorded `failed`, or `dead` at its
    `max_deliveries`th failure."""
    started = time.perf_counter()
    with write_transaction(db):
        bound_transaction(db, deadline)  # PostgreSQL: statement, lock wait and idle limits from the deadline
        outcomes = _Batch(db, prior, policy, max_deliveries, deadline).run(entries)
        _check(deadline)
        seconds = (time.perf_counter() - started) / max(1, len(entries))
        faults.checkpoint("before_commit")
    faults.checkpoint("after_commit")
    return [dataclasses.replace(outcome, seconds=seconds) for outcome in outcomes]


def settlement_of(outcomes: list[EntryOutcome], prior: PriorState) -> Settlement:
    done = [o for o in outcomes if o.outcome not in FAILED_OUTCOMES]
    return Settlement(
        ack_ids=tuple(o.entry.entry_id for o in done),
        processed_event_ids=tuple(dict.fromkeys(o.entry.event_id for o in done if o.entry.event_id)),
        changed_communities=tuple(dict.fromkeys(o.community_id for o in done if o.community_id)),
        # A failed or dead outcome has its error and failure (_Batch._fail).
        failures={o.entry.entry_id: cast(Failure, o.failure) for o in outcomes if o.outcome == Outcome.FAILED},
        dead=tuple(
            DeadLetter(o.entry, cast(str, o.error), cast(Failure, o.failure))
            for o in outcomes
            if o.outcome == Outcome.DEAD
        ),
        cleared_failures=tuple(o.entry.entry_id for o in done if o.entry.entry_id in prior.failures),
    )


def load_subscription(db: peewee.Database, community_id: str) -> SubState | None:
    """A community's subscription state, inside the caller's transaction (locked on PostgreSQL)."""
    return _States.load({community_id}, set(), is_postgres(db)).find(("community", community_id))


def write_result(db: peewee.Database, result: Result) -> None:
    """Write what a handler's Result changed (the state and its audit rows), inside the caller's transaction."""
    writes = _Writes()
    _States().take(result, writes)
    writes.flush(db)


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise BatchDeadlineExceeded("the batch ran past its deadline; rolled back")


@dataclasses.dataclass
class _Item:
    index: int  # in the batch
    entry: Entry
    facts: BillingFacts | Result | None = None  # what `read` made of it: facts, or an `ignored` Result
    error: str | None = None  # why it could not be read


class _Batch:
    def __init__(
        self, db: peewee.Database, prior: PriorState, policy: Policy, max_deliveries: int, deadline: float | None
    ):
        self.db = db
        self.prior = prior
        self.policy = policy
        self.max_deliveries = max_deliveries
        self.deadline = deadline
        self.postgres = is_postgres(db)
        self.outcomes: dict[int, EntryOutcome] = {}
        self.failed_rows: list[_EventRow] = []  # webhook_events rows of the failures (_EVENT_FIELDS), written last

    def run(self, entries: list[Entry]) -> list[EntryOutcome]:
        # An event id twice in one batch: its second entry goes in a round after the first's, and so finds
        # the first's row, as if it came in the next batch.
        pending = list(enumerate(entries))
        while pending:
            seen: set[str] = set()
            this: list[tuple[int, Entry]] = []
            later: list[tuple[int, Entry]] = []
            for index, entry in pending:
                (later if entry.event_id in seen else this).append((index, entry))
                seen.add(entry.event_id)
            self._round(this)
            pending = later
        self._write_failures()
        return [self.outcomes[index] for index in range(len(entries))]

    def _round(self, entries: list[tuple[int, Entry]]) -> None:
        todo = []
        for index, entry in entries:
            if entry.event_id in self.prior.processed_event_ids:
                # Its settlement dropped the cached entitlements with the mark.
                self.outcomes[index] = EntryOutcome(entry, Outcome.DUPLICATE)
            elif not entry.event_id:
                self._fail(index, entry, f"ValueError: stream entry {entry.entry_id} has no event_id", record=False)
            else:
                todo.append((index, entry))
        _check(self.deadline)
        applied, unstorable = self._claim([entry for _, entry in todo])
        items = []
        for index, entry in todo:
            if entry.event_id in applied:  # applied before: drop the cache again (the crash may have come first)
                self.outcomes[index] = EntryOutcome(entry, Outcome.DUPLICATE, community_id=applied[entry.event_id])
            elif entry.event_id in unstorable:
                self._fail(index, entry, unstorable[entry.event_id], record=False)
            else:
                items.append(_read(index, entry))
        _check(self.deadline)
        try:
            with self.db.atomic():
                self._apply(items)
        except _FATAL:
            raise
        except Exception as exc:
            log.warning("a statement of the batch failed (%s); applying its %d events one by one", exc, len(items))
            for item in items:
                _check(self.deadline)
                try:
                    with self.db.atomic():
                        self._apply([item])
                except _FATAL:
                    raise
                except Exception as exc:
                    log.exception("event %s (%s) could not be written", item.entry.event_id, item.entry.event_type)
                    self._fail(item.index, item.entry, f"{type(exc).__name__}: {exc}")

    # -- 1. claim ------------------------------------------------------------------------------------------

    def _claim(self, entries: list[Entry]) -> tuple[dict[str, str | None], dict[str, str]]:
        """({id already applied: the community it changed}, {id we cannot store: why}). Every other id is this
        batch's: its row inserted now, or a `failed` or `dead` row taken over."""
        if not entries:
            return {}, {}
        unstorable: dict[str, str] = {}
        try:
            with self.db.atomic():
                inserted = self._insert_rows(entries)
        except _FATAL:
            raise
        except Exception:  # an id too long for the column, or with a NUL (psycopg2)
            inserted = set()
            for entry in entries:
                try:
                    with self.db.atomic():
                        inserted |= self._insert_rows([entry])
                except _FATAL:
                    raise
                except Exception as exc:
                    # Left unrecorded (no row can hold it), dead-lettered in time.
                    unstorable[entry.event_id] = f"{type(exc).__name__}: {exc}"
        settled = inserted | unstorable.keys()
        return self._applied_before([e.event_id for e in entries if e.event_id not in settled]), unstorable

    def _insert_rows(self, entries: list[Entry]) -> set[str]:
        # The status is rewritten with the outcome before the commit.
        rows = [(entry.event_id, entry.event_type[:255], EventStatus.FAILED, _received_at(entry)) for entry in entries]
        returned = _insert(
            self.db,
            WebhookEvent,
            ("stripe_event_id", "event_type", "status", "received_at"),
            rows,
            'ON CONFLICT DO NOTHING RETURNING "stripe_event_id"',
        )
        return {row[0] for row in returned}

    def _applied_before(self, event_ids: list[str]) -> dict[str, str | None]:
        """Of ids that already had a row: the applied ones, with the community each changed (the rest are rows
        left `failed` or `dead`, which this batch takes over; locked on PostgreSQL)."""
        applied: dict[str, str | None] = {}
        for chunk in _chunks(event_ids):
            query = WebhookEvent.select(
                WebhookEvent.stripe_event_id, WebhookEvent.status, WebhookEvent.community_id
            ).where(WebhookEvent.stripe_event_id.in_(chunk))
            for row in query.for_update() if self.postgres else query:
                if row.status in FINAL_EVENT_STATUSES:
                    applied[row.stripe_event_id] = row.community_id
        return applied

    # -- 2-4. load, apply in memory, write -----------------------------------------------------------------

    def _apply(self, items: list[_Item]) -> None:
        facts = [item.facts for item in items if isinstance(item.facts, BillingFacts)]
        communities = {f.community_id for f in facts if f.community_id}
        subscriptions = {f.subscription_id for f in facts if f.subscription_id}
        self._lock(communities, subscriptions)
        states = _States.load(communities, subscriptions, self.postgres)
        writes = _Writes()
        waiting = _Waiting(subscriptions)
        outcomes = {}
        for item in items:
            outcomes[item.index] = self._apply_one(item, states, writes, waiting)
        _check(self.deadline)
        writes.flush(self.db)
        for index, outcome in outcomes.items():
            if outcome.outcome in FAILED_OUTCOMES:
                self._fail(index, outcome.entry, cast(str, outcome.error))  # a failed outcome has its error
            else:
                self.outcomes[index] = outcome

    def _apply_one(self, item: _Item, states: _States, writes: _Writes, waiting: _Waiting) -> EntryOutcome:
        entry = item.entry
        if item.error is not None:
            return EntryOutcome(entry, Outcome.FAILED, error=item.error)
        if isinstance(item.facts, Result):  # not ours
            writes.outcome(entry.event_id, entry.event_type, item.facts.outcome)
            return EntryOutcome(entry, Outcome(item.facts.outcome))
        try:
            facts = cast(BillingFacts, item.facts)  # an item without an error was read: facts or a Result
            result = apply_facts(facts, states.find(lookup_key(facts)), self.policy)
        except Exception as exc:
            log.exception(
                "event %s (%s) failed",
                entry.event_id,
                entry.event_type,
                extra={"event_id": entry.event_id, "entry_id": entry.entry_id, "event_type": entry.event_type},
            )
            return EntryOutcome(entry, Outcome.FAILED, error=f"{type(exc).__name__}: {exc}")
        changed = states.take(result, writes, entry.event_id, entry.event_type)
        if result.outcome == EventStatus.DEFERRED:
            writes.deferred[entry.event_id] = _Deferred(
                entry.event_id,
                entry.event_type,
                cast(str, result.subscription_id),  # deferred: it has one
                entry.created,
                entry.payload.decode("utf-8", "replace"),
            )
        if result.linked_subscription_id:
            self._apply_waiting(result.linked_subscription_id, states, writes, waiting)
        return EntryOutcome(entry, Outcome(result.outcome), community_id=changed)

    def _apply_waiting(self, subscription_id: str, states: _States, writes: _Writes, waiting: _Waiting) -> None:
        """The events deferred for a subscription just linked to its community, oldest first. One that fails
        now is recorded `failed` with an audit row: it has no stream entry left to retry."""
        for row in waiting.take(subscription_id, writes):
            try:
                event = parse_envelope(row.payload)
                facts = read(event)
                result = (
                    facts
                    if isinstance(facts, Result)
                    else apply_facts(facts, states.find(lookup_key(facts)), self.policy)
                )
                if result.outcome == EventStatus.DEFERRED:  # cannot happen once linked; keep it rather than lose it
                    waiting.keep(row, writes)
                    continue
            except Exception as exc:
                log.exception("deferred event %s (%s) failed", row.event_id, row.event_type)
                error = f"{type(exc).__name__}: {exc}"
                writes.outcome(row.event_id, row.event_type, EventStatus.FAILED, error=error[:4000])
                writes.audits.append(
                    AuditRecord(
                        "deferred_failed",
                        None,
                        {
                            "stripe_event_id": row.event_id,
                            "stripe_event_type": row.event_type,
                            "subscription_id": subscription_id,
                            "error": error[:1000],
                        },
                    )
                )
                continue
            changed = states.take(result, writes, row.event_id, row.event_type)
            log.info(
                "deferred event %s (%s) applied: %s",
                row.event_id,
                row.event_type,
                result.outcome,
                extra={
                    "event_id": row.event_id,
                    "event_type": row.event_type,
                    "outcome": result.outcome,
                    "community_id": changed,
                },
            )

    def _lock(self, communities: Iterable[str], subscriptions: Iterable[str]) -> None:
        """PostgreSQL: transaction-scoped advisory locks on the batch's communities and subscriptions, taken in
        the order of their keys, so whichever consumer comes second waits and then sees what the first
        committed (SQLite's write transactions are serial already). The schema is in the key: advisory locks
        are database-wide, and two deployments may share a database in separate schemas."""
        keys = [f":billing:community:{c}" for c in communities] + [f":billing:subscription:{s}" for s in subscriptions]
        if self.postgres and keys:
            self.db.execute_sql(
                "SELECT count(pg_advisory_xact_lock(k)) FROM "
                "(SELECT DISTINCT hashtext(current_schema() || key) AS k FROM unnest(%s::text[]) AS key ORDER BY k) s",
                (keys,),
            )

    # -- failures ------------------------------------------------------------------------------------------

    def _fail(self, index: int, entry: Entry, error: str, record: bool = True) -> None:
        before = self.prior.failures.get(entry.entry_id)
        failure = Failure(before.count + 1, before.first_failed_ms) if before else Failure(1, int(time.time() * 1000))
        status = EventStatus.DEAD if failure.count >= self.max_deliveries else EventStatus.FAILED
        self.outcomes[index] = EntryOutcome(entry, Outcome(status), error=error, failure=failure)
        if record:
            self.failed_rows.append(
                (entry.event_id, entry.event_type[:255], status, error[:4000], _received_at(entry), None, None)
            )

    def _write_failures(self) -> None:
        """The failed events' rows, in one statement; one by one if that fails (a row no column can hold is
        left unrecorded: the entry is dead-lettered in time)."""
        rows = list({row[0]: row for row in self.failed_rows}.values())
        if not rows:
            return
        try:
            with self.db.atomic():
                _upsert_events(self.db, rows)
        except _FATAL:
            raise
        except Exception:
            for row in rows:
                try:
                    with self.db.atomic():
                        _upsert_events(self.db, [row])
                except _FATAL:
                    raise
                except Exception:
                    log.exception("could not record the failure of event %r", row[0])


def _read(index: int, entry: Entry) -> _Item:
    try:
        return _Item(index, entry, facts=read(parse_envelope(entry.payload)))
    except Exception as exc:
        return _Item(index, entry, error=f"{type(exc).__name__}: {exc}")


class _States:
    """The subscription states of the batch's communities, as loaded and as the batch changes them."""

    def __init__(self) -> None:
        self.by_community: dict[str, SubState] = {}
        self.by_subscription: dict[str, str] = {}  # Stripe subscription id -> community id

    @classmethod
    def load(cls, communities: set[str], subscriptions: set[str], postgres: bool) -> _States:
        states = cls()
        if not communities and not subscriptions:
            return states
        fields = ("community_id", "created_at", *_SUB_FIELDS)
        query = (
            Subscription.select(*(getattr(Subscription, field) for field in fields))
            .where(
                Subscription.community_id.in_(list(communities))
                | Subscription.stripe_subscription_id.in_(list(subscriptions))
            )
            .order_by(Subscription.id)
            .tuples()
        )
        # peewee's stub has .tuples() return the query as is, its rows still models
        for row in cast("Iterable[tuple[Any, ...]]", query.for_update() if postgres else query):
            if row[0] not in states.by_community:
                states.put(SubState(**dict(zip(fields, row))))
        return states

    def find(self, key: tuple[str, str] | None) -> SubState | None:
        if key is None:
            return None
        kind, value = key
        if kind == "community":
            return self.by_community.get(value)
        state = self.by_community.get(self.by_subscription.get(value, ""))
        return state if state is not None and state.stripe_subscription_id == value else None

    def put(self, state: SubState) -> None:
        self.by_community[state.community_id] = state
        if state.stripe_subscription_id:
            self.by_subscription[state.stripe_subscription_id] = state.community_id

    def take(self, result: Result, writes: _Writes, event_id: str | None = None, event_type: str = "") -> str | None:
        """Keep what `result` changed, and (given its event) record the event's outcome. The community whose
        subscription it changed, for the cache to drop; None unless processed."""
        if result.state is not None:
            self.put(result.state)
            writes.subscriptions[result.state.community_id] = result.state
        writes.audits.extend(result.audits)
        changed = result.community_id if result.outcome == EventStatus.PROCESSED else None
        if event_id is not None:
            writes.outcome(event_id, event_type, result.outcome, community_id=changed)
        return changed


@dataclasses.dataclass
class _Deferred:
    event_id: str
    event_type: str
    subscription_id: str
    created: int
    payload: str
    row_id: int | None = None  # its deferred_events row, if it has one from an earlier batch


class _Waiting:
    """Events deferred for the batch's subscriptions: read from deferred_events at the first link (one
    SELECT for all of them), plus those this batch defers."""

    def __init__(self, subscriptions: set[str]):
        self.subscriptions = subscriptions
        self.loaded: dict[str, list[_Deferred]] | None = None

    def _load(self) -> dict[str, list[_Deferred]]:
        if self.loaded is None:
            self.loaded = defaultdict(list)
            for chunk in _chunks(sorted(self.subscriptions)):
                query = (
                    DeferredEvent.select()
                    .where(DeferredEvent.stripe_subscription_id.in_(chunk))
                    .order_by(DeferredEvent.created, DeferredEvent.id)
                )
                for row in query:
                    self.loaded[row.stripe_subscription_id].append(
                        _Deferred(
                            row.stripe_event_id,
                            row.event_type,
                            row.stripe_subscription_id,
                            row.created,
                            row.payload,
                            row.id,
                        )
                    )
        return self.loaded

    def take(self, subscription_id: str, writes: _Writes) -> list[_Deferred]:
        """The events waiting for `subscription_id` (in deferred_events, or deferred by this batch: in
        `writes.deferred`), oldest first, no longer waiting."""
        batch = [d for d in writes.deferred.values() if d.subscription_id == subscription_id]
        rows = self._load().pop(subscription_id, []) + batch
        for row in rows:
            writes.deferred.pop(row.event_id, None)
            if row.row_id is not None:
                writes.deferred_deletes.append(row.row_id)
        return sorted(rows, key=lambda d: d.created)  # stable: in the order they were deferred, within a second

    def keep(self, row: _Deferred, writes: _Writes) -> None:
        if row.row_id is not None:
            writes.deferred_deletes.remove(row.row_id)
        else:
            writes.deferred[row.event_id] = row


class _OutcomeRow(TypedDict):
    """An event's outcome, as _Writes gathers it for its webhook_events row."""

    event_type: str
    status: EventStatus
    community_id: str | None
    error_message: str | None


class _Writes:
    """What the batch writes, gathered in memory, then flushed as a few multi-row statements."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, SubState] = {}
        self.audits: list[AuditRecord] = []
        self.deferred: dict[str, _Deferred] = {}
        self.deferred_deletes: list[int] = []
        self.outcomes: dict[str, _OutcomeRow] = {}

    def outcome(
        self,
        event_id: str,
        event_type: str,
        status: EventStatus,
        community_id: str | None = None,
        error: str | None = None,
    ) -> None:
        self.outcomes[event_id] = {
            "event_type": event_type[:255],
            "status": status,
            "community_id": community_id,
            "error_message": error,
        }

    def flush(self, db: peewee.Database) -> None:
        now = utcnow()
        subscriptions = sorted(self.subscriptions.values(), key=lambda state: state.community_id)
        _insert(
            db,
            Subscription,
            ("community_id", "created_at", *_SUB_FIELDS),
            [
                (state.community_id, state.created_at or now, *(getattr(state, f) for f in _SUB_FIELDS))
                for state in subscriptions
            ],  # one order for every consumer's writes
            _upsert_clause("community_id", _SUB_FIELDS),
        )
        _insert(
            db,
            AuditLog,
            ("event_type", "community_id", "created_at", "event_data"),
            [(a.kind, a.community_id, now, json.dumps(a.data, sort_keys=True)) for a in self.audits],
        )
        _insert(
            db,
            DeferredEvent,
            ("stripe_event_id", "stripe_subscription_id", "event_type", "created", "payload", "received_at"),
            [
                (d.event_id, d.subscription_id, d.event_type[:255], d.created, d.payload, now)
                for d in self.deferred.values()
            ],
            "ON CONFLICT DO NOTHING",
        )
        for chunk in _chunks(self.deferred_deletes):
            DeferredEvent.delete().where(DeferredEvent.id.in_(chunk)).execute()
        _upsert_events(
            db,
            [
                (event_id, row["event_type"], row["status"], row["error_message"], now, now, row["community_id"])
                for event_id, row in self.outcomes.items()
            ],
        )


_EVENT_FIELDS = (
    "stripe_event_id",
    "event_type",
    "status",
    "error_message",
    "received_at",
    "processed_at",
    "community_id",
)
_EventRow = tuple[str, str, EventStatus, str | None, dt.datetime, dt.datetime | None, str | None]  # _EVENT_FIELDS


def _upsert_events(db: peewee.Database, rows: list[_EventRow]) -> None:
    """Rows of webhook_events (in _EVENT_FIELDS order): new ones inserted; an existing row (the claim) takes
    their status, error, processing time and community."""
    _insert(
        db,
        WebhookEvent,
        _EVENT_FIELDS,
        rows,
        _upsert_clause("stripe_event_id", ("status", "error_message", "processed_at", "community_id")),
    )


def _insert(
    db: peewee.Database,
    model: type[peewee.Model],
    fields: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    suffix: str = "",
) -> list[tuple[Any, ...]]:
    """One multi-row INSERT per CHUNK rows, its SQL written here rather than by peewee's query builder (which
    cost more than the database's own work: the README's Speed section); values converted by the model's
    fields, as peewee would. The rows a RETURNING in `suffix` returned, from every statement."""
    columns = [model._meta.fields[name] for name in fields]
    names = ", ".join(f'"{column.column_name}"' for column in columns)
    head = f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES '

    row_sql = "(" + ", ".join([db.param] * len(columns)) + ")"
    converters = [column.db_value for column in columns]
    returned: list[tuple[Any, ...]] = []
    for chunk in _chunks(rows):
        params = [convert(value) for row in chunk for convert, value in zip(converters, row)]
        cursor = db.execute_sql(f"{head}{', '.join([row_sql] * len(chunk))} {suffix}", params)
        if cursor.description:  # a RETURNING clause
            returned += cursor.fetchall()
    return returned


def _upsert_clause(key: str, fields: tuple[str, ...]) -> str:
    return f'ON CONFLICT ("{key}") DO UPDATE SET ' + ", ".join(f'"{f}" = EXCLUDED."{f}"' for f in fields)


def _chunks(rows: list[_T]) -> Iterable[list[_T]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def _received_at(entry: Entry) -> dt.datetime:
    """When the receiver took the event; now for an entry whose `received_at` no datetime holds (an entry
    XADDed by hand), which would otherwise fail the event and then the recording of its failure."""
    try:
        return from_epoch(entry.received_at_ms / 1000)
    except (OverflowError, ValueError, OSError):
        return utcnow()
