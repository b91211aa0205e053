"""Backfill: list the events of a time window from Stripe's Events API and queue, oldest first, those we do not
have, through the receiver's own dedupe-and-XADD script (billing.event_queue). The consumers then apply them as
if Stripe had delivered them.

An event is "already had" when the database holds it applied (or dead-lettered), or when the script finds its
dedupe mark (queued, or processed within DEDUPE_TTL_SECONDS): Stripe keeps 30 days of events, longer than the
marks live. The run keeps a cursor in Redis, the (created, id) of the last event it handled, written after each
one, so a run stopped anywhere (Ctrl-C, a crash, Stripe or Redis giving up) resumes after it: at worst the
event in hand when it stopped is found again as already had."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import redis

from billing.event_queue import EventQueue
from billing.keys import Keys
from billing.stripe_events import event_created
from billing.vocabulary import FINAL_EVENT_STATUSES, HANDLED_TYPES, EventStatus
from consumer.stripe_api import StripeApi
from models.tables import WebhookEvent

# Rows for which the event needs nothing more from us: applied, or dead-lettered (which an operator decides).
HELD_STATUSES = (*FINAL_EVENT_STATUSES, EventStatus.DEAD)
CURSOR_TTL_SECONDS = 31 * 86_400  # Stripe keeps 30 days of events: an older cursor resumes nothing
CHUNK = 100  # events looked up in the database at once
MAX_TYPES = 20  # Stripe's limit for types[]


class Found(str, enum.Enum):
    """What became of one listed event (the values are metric labels and JSON keys)."""

    QUEUED = "queued"
    ALREADY_HAD = "already_had"
    OTHER_TYPE = "other_type"  # a type we do not handle: never queued


class Enqueuer:
    """Queues the events we do not have; shared by the backfill and the reconciler."""

    def __init__(
        self, client: redis.Redis, keys: Keys, dedupe_ttl_seconds: int, min_replicas: int = 0, wait_ms: int = 500
    ):
        self.client = client
        self.keys = keys
        self.queue = EventQueue(client, keys, dedupe_ttl_seconds, min_replicas, wait_ms)

    def place(self, events: Iterable[dict[str, Any]], dry_run: bool = False) -> Iterator[tuple[dict[str, Any], Found]]:
        """Queue each event unless we have it, in the order given; yields each with what became of it once
        that is done (so a caller may note its progress after each)."""
        for chunk in _chunks(events, CHUNK):
            held = self._in_database([e["id"] for e in chunk if e.get("type") in HANDLED_TYPES])
            for event in chunk:
                if event.get("type") not in HANDLED_TYPES:
                    yield event, Found.OTHER_TYPE
                elif event["id"] in held:
                    yield event, Found.ALREADY_HAD
                elif dry_run:
                    marked = self.client.exists(self.keys.seen(event["id"]))
                    yield event, Found.ALREADY_HAD if marked else Found.QUEUED
                else:
                    entry_id = self.queue.enqueue(
                        event["id"], event["type"], event_created(event), json.dumps(event).encode()
                    )
                    yield event, Found.QUEUED if entry_id else Found.ALREADY_HAD

    @staticmethod
    def _in_database(event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        query = WebhookEvent.select(WebhookEvent.stripe_event_id).where(
            WebhookEvent.stripe_event_id.in_(event_ids) & WebhookEvent.status.in_(HELD_STATUSES)
        )
        return {row.stripe_event_id for row in query}


# --- the window --------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_moment(text: str, now: int) -> int:
    """Epoch seconds from `72h`, `30m`, `3d`, `90s` (that long before `now`), an ISO-8601 time
    (`2026-03-16T11:00:00Z`, `2026-03-16`; UTC unless it says otherwise) or epoch seconds."""
    text = text.strip()
    if match := _DURATION.fullmatch(text):
        return now - int(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (72h, 30m, 3d) nor a time (2026-03-16T11:00:00Z, epoch seconds)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


@dataclasses.dataclass(frozen=True)
class Window:
    since: int
    until: int
    types: tuple[str, ...] = HANDLED_TYPES

    def __post_init__(self) -> None:
        if self.since > self.until:
            raise ValueError("--since is after --until")
        if not self.types or len(self.types) > MAX_TYPES:
            raise ValueError(f"give 1 to {MAX_TYPES} event types (Stripe's limit)")


# --- the cursor --------------------------------------------------------------------------------------------


class Cursor:
    """How far an interrupted run got. It resumes a later run only if that run's window starts no earlier and
    asks for no other types: everything up to the cursor of the window it covers is then handled."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.key = keys.backfill_cursor

    def load(self, window: Window) -> tuple[int, str] | None:
        raw = self.client.get(self.key)
        try:
            saved = json.loads(raw) if raw else None
            if saved and saved["since"] <= window.since and set(window.types) <= set(saved["types"]):
                return int(saved["created"]), str(saved["id"])
        except (ValueError, KeyError, TypeError):  # not ours, or from another release: start over
            pass
        return None

    def save(self, window: Window, position: tuple[int, str]) -> None:
        value = {"since": window.since, "types": list(window.types), "created": position[0], "id": position[1]}
        self.client.set(self.key, json.dumps(value), ex=CURSOR_TTL_SECONDS)

    def clear(self) -> None:
        self.client.delete(self.key)


# --- the run -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    listed: int = 0
    queued: int = 0
    already_had: int = 0
    other_types: int = 0
    before_cursor: int = 0  # handled by the interrupted run this one resumed

    def add(self, found: Found) -> None:
        field = {Found.QUEUED: "queued", Found.ALREADY_HAD: "already_had", Found.OTHER_TYPE: "other_types"}[found]
        setattr(self, field, getattr(self, field) + 1)


class Progress:
    """What a run reports as it goes; the CLI draws it (a bar on a terminal, lines otherwise)."""

    def listed(self, count: int) -> None: ...
    def resuming(self, position: tuple[int, str]) -> None: ...
    def queueing(self, total: int) -> None: ...
    def advanced(self, counts: Counts) -> None: ...


class Backfill:
    def __init__(
        self, api: StripeApi, enqueuer: Enqueuer, cursor: Cursor, window: Window, progress: Progress | None = None
    ):
        self.api, self.enqueuer, self.cursor, self.window = api, enqueuer, cursor, window
        self.progress = progress or Progress()
        self.counts = Counts()  # so far, also when the run is interrupted
        self.position: tuple[int, str] | None = None  # of the last event handled

    def run(self, dry_run: bool = False, restart: bool = False) -> Counts:
        with tempfile.TemporaryFile() as spool:
            ordered = self._list_oldest_first(spool)
            resume_after = None if dry_run or restart else self.cursor.load(self.window)
            if resume_after:
                self.progress.resuming(resume_after)
            todo = []
            for key, offset in ordered:
                if resume_after and key <= resume_after:
                    self.counts.before_cursor += 1
                else:
                    todo.append((key, offset))
            self.progress.queueing(len(todo))
            for event, found in self.enqueuer.place(_read(spool, todo), dry_run=dry_run):
                self.counts.add(found)
                self.position = (event_created(event), event["id"])
                if not dry_run:
                    self.cursor.save(self.window, self.position)
                self.progress.advanced(self.counts)
        if not dry_run:
            self.cursor.clear()  # done: nothing to resume
        return self.counts

    def _list_oldest_first(self, spool: BinaryIO) -> list[tuple[tuple[int, str], int]]:
        """Stripe lists newest first; we queue oldest first (handlers judge order by `created`, and a cursor
        only means something in one order). Events wait in a file, not in memory: 30 days can be many."""
        keys = []
        for event in self.api.list_events(
            created_gte=self.window.since, created_lte=self.window.until, types=self.window.types
        ):
            keys.append(((event_created(event), event["id"]), spool.tell()))
            spool.write(json.dumps(event).encode() + b"\n")
            self.counts.listed += 1
            self.progress.listed(self.counts.listed)
        return sorted(keys)


def _read(spool: BinaryIO, todo: Sequence[tuple[tuple[int, str], int]]) -> Iterator[dict[str, Any]]:
    for _key, offset in todo:
        spool.seek(offset)
        yield json.loads(spool.readline())


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
