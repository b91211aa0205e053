"""The Redis Streams mechanics, in one place: the group (creating it, and again when Redis lost it), reads, claims
(idle entries, our own due for a retry, and an operator's claim for a named consumer), what ops see of the group,
settling a batch (consumer/settlement.py) and trimming. Handlers, the batch logic and the worker's loop never
speak Redis; they get Entry values and return outcomes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypedDict, cast

import redis
from redis.typing import XReadGroupResponse

from billing.config import Settings
from billing.redis_io import reply_code
from consumer.dead_letters import DeadLetters
from consumer.entries import (
    ConsumerInfo,
    Entry,
    GroupState,
    PendingEntry,
    PriorState,
    Settlement,
    as_text,
    id_tuple,
    parse_failure,
)
from consumer.settlement import Settler

log = logging.getLogger(__name__)


class _PendingRow(TypedDict):
    """One row of XPENDING's extended form, as redis-py gives it (which types it dict[str, bytes | str | int])."""

    message_id: bytes | str
    consumer: bytes | str
    time_since_delivered: int
    times_delivered: int


class GroupMissing(redis.ResponseError):
    """Redis has no such stream or no such group (NOGROUP): it restarted empty, or failed over to a replica that
    had not received them. `EventStream.ensure_group` makes them again."""


class EventStream:
    def __init__(self, client: redis.Redis, settings: Settings, consumer: str | None = None):
        """`consumer`: the name this stream reads and claims as (None for a stream only looked at or operated on)."""
        self.client = client
        self.keys = settings.keys
        self.group = settings.consumer_group
        self.consumer = consumer
        self.dead_letters = DeadLetters(client, self.keys)
        self._settler = Settler(client, self.keys, self.group, settings.dedupe_ttl_seconds, self.dead_letters)
        self._delete_consumer = client.register_script(_DELETE_IF_NOTHING_PENDING)

    # --- the group ------------------------------------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the group at the stream's start (so events queued before any consumer ran are read),
        creating the stream too. True if it was created now. Looks first (XINFO GROUPS, a read): Redis refuses
        XGROUP CREATE when it is full or a replica, even for a group that exists."""
        if self.group_exists():
            return False
        try:
            self.client.xgroup_create(self.keys.stream, self.group, id="0", mkstream=True)
            return True
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):  # another consumer created it meanwhile
                return False
            raise

    def group_exists(self) -> bool:
        return self.group_info() is not None

    def groups(self) -> list[dict[str, Any]] | None:
        """Every group of the stream (XINFO GROUPS), or None when there is no stream."""
        try:
            return self.client.xinfo_groups(self.keys.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise

    def group_info(self) -> dict[str, Any] | None:
        """Our group's XINFO GROUPS entry, or None when it (or the stream) does not exist."""
        return next((group for group in self.groups() or [] if as_text(group["name"]) == self.group), None)

    def group_state(self) -> GroupState:
        """The whole group's backlog, in one round trip. A stream or group that does not exist yet reads as
        empty."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xlen(self.keys.stream)
        pipe.xinfo_groups(self.keys.stream)
        pipe.xpending(self.keys.stream, self.group)
        pipe.xlen(self.keys.dead_letters)
        length, groups, summary, dead = pipe.execute(raise_on_error=False)  # connection errors still raise
        for reply in (length, dead):
            if isinstance(reply, Exception):
                raise reply
        group = (
            next((g for g in groups if as_text(g["name"]) == self.group), None) if isinstance(groups, list) else None
        )
        pending = summary["pending"] if isinstance(summary, dict) else 0
        return GroupState(
            stream_length=length,
            group_lag=group.get("lag") if group else length,  # a group yet to be created starts at 0: all of it
            pending=pending,
            oldest_pending_id=as_text(summary["min"]) if pending else None,
            dead_letters=dead,
        )

    def consumers(self) -> list[ConsumerInfo]:
        return [
            ConsumerInfo(name=as_text(c["name"]), pending=c["pending"], idle_ms=c["idle"], inactive_ms=_inactive_ms(c))
            for c in self.client.xinfo_consumers(self.keys.stream, self.group)
        ]

    def delete_consumer(self, name: str) -> bool:
        """Delete consumer `name` if it holds nothing pending (checked and deleted in one step). True if deleted."""
        return bool(self._delete_consumer(keys=[self.keys.stream], args=[self.group, name]))

    # --- reads and claims -----------------------------------------------------------------------------------

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        """This consumer's entries delivered before but not acknowledged, after id `after`."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return self._read(">", count, block_ms=block_ms)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        with _group_needed():
            # cast: a stream that reads or claims was given its consumer name (so in the methods below)
            reply = self.client.xreadgroup(
                self.group, cast(str, self.consumer), {self.keys.stream: start}, count=count, block=block_ms
            )
        entries: list[Entry] = []
        vanished: list[str] = []
        for _stream, messages in _stream_messages(reply):
            _collect(messages, entries, vanished)
        self._forget(vanished)
        return entries

    def reclaim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries that any consumer (a dead one, usually) has left idle for `min_idle_ms`."""
        with _group_needed():
            reply = self.client.xautoclaim(
                self.keys.stream, self.group, cast(str, self.consumer), min_idle_ms, "0-0", count=count
            )
        entries: list[Entry] = []
        vanished: list[str] = []
        _collect(reply[1], entries, vanished)
        self._forget(vanished + [as_text(entry_id) for entry_id in (reply[2] if len(reply) > 2 else [])])
        return entries

    def retry_own(self, due: Callable[[int, int], bool], count: int) -> list[Entry]:
        """Claim again this consumer's own pending entries that are due for another try: entries that
        failed here (with backoff, by `due(idle_ms, deliveries)`) and entries an operator claimed to it."""
        with _group_needed():
            rows = cast(
                "list[_PendingRow]",
                self.client.xpending_range(self.keys.stream, self.group, "-", "+", count, consumername=self.consumer),
            )
            ids = [row["message_id"] for row in rows if due(row["time_since_delivered"], row["times_delivered"])]
            if not ids:
                return []
            claimed = self.client.xclaim(self.keys.stream, self.group, cast(str, self.consumer), 0, ids)  # type: ignore[arg-type]  # see claim_for
        entries: list[Entry] = []
        vanished: list[str] = []
        _collect(claimed, entries, vanished)
        got = {entry.entry_id for entry in entries}
        self._forget([as_text(i) for i in ids if as_text(i) not in got])  # trimmed from under us
        return entries

    def pending(self, count: int, *, min_idle_ms: int | None = None, consumer: str | None = None) -> list[PendingEntry]:
        """The group's pending entries, oldest first (only `consumer`'s, only those idle `min_idle_ms`), each with
        its event id and type."""
        rows = cast(
            "list[_PendingRow]",
            self.client.xpending_range(
                self.keys.stream, self.group, "-", "+", count, consumername=consumer, idle=min_idle_ms
            ),
        )
        pipe = self.client.pipeline(transaction=False)
        for row in rows:
            pipe.xrange(self.keys.stream, row["message_id"], row["message_id"], count=1)
        found = [
            {
                as_text(k): as_text(v)
                for k, v in (result[0][1] if result else {}).items()
                if as_text(k) in ("event_id", "event_type")
            }  # not the payload: any bytes at all
            for result in pipe.execute()
        ]
        return [
            PendingEntry(
                entry_id=as_text(row["message_id"]),
                event_id=fields.get("event_id"),
                event_type=fields.get("event_type"),
                consumer=as_text(row["consumer"]),
                idle_ms=row["time_since_delivered"],
                deliveries=row["times_delivered"],
            )
            for row, fields in zip(rows, found)
        ]

    def claim_for(self, consumer: str, entry_ids: list[str], idle_ms: int) -> None:
        """Give pending entries to `consumer` (an operator's move: JUSTID, so it is not counted as a delivery), as
        if idle `idle_ms` already."""
        # ignore: redis-py types the ids list[StreamIdT], and a list is invariant: it refuses a list[str]
        self.client.xclaim(
            self.keys.stream,
            self.group,
            consumer,
            0,
            entry_ids,  # type: ignore[arg-type]
            idle=idle_ms,
            justid=True,
        )

    # --- after a batch ---------------------------------------------------------------------------------------

    def prior_state(self, entries: list[Entry]) -> PriorState:
        """In one round trip: events Redis remembers as processed (the fast path; the database stays
        the truth) and the entries' earlier handler failures."""
        if not entries:
            return PriorState()
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([self.keys.seen(entry.event_id) for entry in entries])
        pipe.hmget(self.keys.failures, [entry.entry_id for entry in entries])
        seen, failures = pipe.execute()
        return PriorState(
            processed_event_ids=frozenset(e.event_id for e, value in zip(entries, seen) if value == b"processed"),
            failures={e.entry_id: parse_failure(value) for e, value in zip(entries, failures) if value},
        )

    def settle(self, settlement: Settlement) -> bool:
        """Tell Redis what a committed batch did; False when Redis, full, took only what needs no memory (see
        Settler.settle)."""
        with _group_needed():
            return self._settler.settle(settlement)

    def trim(self, retention_ms: int, now_ms: int) -> int:
        """Drop entries older than the retention window that every group has acknowledged; never one
        still pending or not yet delivered. Returns how many were removed."""
        try:
            groups = self.groups()
        except redis.ResponseError:  # not a stream
            return 0
        if groups is None:  # no stream yet
            return 0
        keep_from = [(now_ms - retention_ms, 0)]
        for group in groups:
            with _group_needed():  # gone since we listed it
                summary = self.client.xpending(self.keys.stream, group["name"])
            if summary["pending"]:
                keep_from.append(id_tuple(summary["min"]))
            ms, seq = id_tuple(group["last-delivered-id"])
            keep_from.append((ms, seq + 1))  # everything after the last delivered entry is undelivered
        ms, seq = min(keep_from)
        return self.client.xtrim(self.keys.stream, minid=f"{max(ms, 0)}-{seq}", approximate=False)

    def _forget(self, entry_ids: list[str]) -> None:
        """Pending entries whose data is gone from the stream (trimmed): nothing left to process."""
        if entry_ids:
            with _group_needed():
                self.client.xack(self.keys.stream, self.group, *entry_ids)


# Checked and deleted in one step: a consumer that read entries since we looked keeps them (deleting a
# consumer drops its pending entries from the group for good).
_DELETE_IF_NOTHING_PENDING = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
"""


@contextlib.contextmanager
def _group_needed() -> Iterator[None]:
    """A NOGROUP reply, to any command that needs the group, as GroupMissing."""
    try:
        yield
    except redis.ResponseError as exc:
        if reply_code(exc) == "NOGROUP":
            raise GroupMissing(str(exc)) from exc
        raise


def _inactive_ms(consumer: dict[str, Any]) -> int:
    """Since the consumer last read or claimed something. Redis 7.2+ says so in `inactive` (-1 for a consumer that
    never did: then `idle`, since it last tried); before 7.2, `idle` meant just that."""
    inactive: int = consumer.get("inactive", -1)
    return inactive if inactive >= 0 else consumer["idle"]


def _collect(messages: Iterable[Any] | None, entries: list[Entry], vanished: list[str]) -> None:
    """`messages`: a reply's (entry id, fields) pairs, fields None for an entry trimmed from the stream."""
    for raw_id, fields in messages or []:
        if fields:
            entries.append(Entry.from_fields(as_text(raw_id), fields))
        else:  # pending, but trimmed from the stream
            vanished.append(as_text(raw_id))


def _stream_messages(reply: XReadGroupResponse | None) -> list[Any]:
    """XREADGROUP's reply as (stream, messages) pairs, from RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [
            (stream, value[0] if value and isinstance(value[0], list) else value) for stream, value in reply.items()
        ]
    return reply
