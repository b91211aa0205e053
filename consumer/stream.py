"""The Redis Streams mechanics, in one place: the group (creating it, and again when Redis lost it), reads, claims
(idle entries, our own due for a retry, and an operator's claim for a named consumer), what ops see of the group,
settling a batch (consumer/settlement.py) and trimming, over every partition of the stream it covers (entries
named by entries.entry_ref: `<partition>:<id>` when STREAM_PARTITIONS > 1). Handlers, the batch logic and the
worker's loop never speak Redis; they get Entry values and return outcomes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypedDict, cast

import redis
from redis.typing import XReadGroupResponse

from billing.config import Settings
from billing.keys import StreamKeys
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
    entry_ref,
    id_tuple,
    parse_failure,
    split_ref,
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
        """`consumer`: the name this stream reads and claims as (None for a stream only looked at or operated on).
        A reading stream covers the partitions it reads (CONSUMER_PARTITIONS, or all); one looked at, every one."""
        self.client = client
        self.keys = settings.keys
        self.group = settings.consumer_group
        self.consumer = consumer
        self.cluster = settings.redis_cluster  # a multi-key command must stay within one slot: one partition
        numbers = settings.read_partitions if consumer is not None else range(self.keys.partitions)
        self.parts = tuple(self.keys.partition(p) for p in numbers)
        self._by_stream = {part.stream: part for part in self.parts}
        self._turn = 0  # on a cluster, the partition whose read blocks next
        self.dead_letters = DeadLetters(client, self.keys)
        self._settler = Settler(client, self.keys, self.group, settings.dedupe_ttl_seconds, self.dead_letters)
        self._delete_consumer = client.register_script(_DELETE_IF_NOTHING_PENDING)

    def _ref(self, part: StreamKeys, entry_id: bytes | str) -> str:
        return entry_ref(part.partition, entry_id, self.keys.partitions)

    def _by_part(self, refs: Iterable[str]) -> dict[int, list[str]]:
        """Entry refs grouped by partition, as the ids of each partition's stream."""
        grouped: dict[int, list[str]] = {}
        for ref in refs:
            p, entry_id = split_ref(ref)
            grouped.setdefault(p, []).append(entry_id)
        return grouped

    # --- the group ------------------------------------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the group at the start of each partition's stream (so events queued before any consumer ran are
        read), creating the stream too. True if it was created now on any. Looks first (XINFO GROUPS, a read):
        Redis refuses XGROUP CREATE when it is full or a replica, even for a group that exists."""
        created = False
        for part in self.parts:
            if self._group_of(self.groups(part)) is not None:
                continue
            try:
                self.client.xgroup_create(part.stream, self.group, id="0", mkstream=True)
                created = True
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # else another consumer created it meanwhile
                    raise
        return created

    def group_exists(self) -> bool:
        return all(self._group_of(self.groups(part)) is not None for part in self.parts)

    def groups(self, part: StreamKeys | None = None) -> list[dict[str, Any]] | None:
        """Every group of a partition's stream (XINFO GROUPS; the first partition's by default), or None when
        there is no such stream."""
        try:
            return self.client.xinfo_groups((part or self.parts[0]).stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return None
            raise

    def group_info(self, part: StreamKeys | None = None) -> dict[str, Any] | None:
        """Our group's XINFO GROUPS entry, or None when it (or the stream) does not exist."""
        return self._group_of(self.groups(part))

    def _group_of(self, groups: list[dict[str, Any]] | None) -> dict[str, Any] | None:
        return next((group for group in groups or [] if as_text(group["name"]) == self.group), None)

    def group_state(self) -> GroupState:
        """The whole group's backlog, summed over the partitions, in one round trip. A stream or group that does
        not exist yet reads as empty."""
        states = self.partition_states()
        if len(states) == 1:
            return states[0]
        lags = [state.group_lag for state in states]
        oldest = [state.oldest_pending_id for state in states if state.oldest_pending_id]
        return GroupState(
            stream_length=sum(state.stream_length for state in states),
            group_lag=None if None in lags else sum(cast("list[int]", lags)),
            pending=sum(state.pending for state in states),
            oldest_pending_id=min(oldest, key=id_tuple) if oldest else None,
            dead_letters=sum(state.dead_letters for state in states),
        )

    def partition_states(self) -> list[GroupState]:
        """Each partition's backlog (in the partitions' order), in one round trip; oldest ids as entry refs."""
        pipe = self.client.pipeline(transaction=False)
        for part in self.parts:
            pipe.xlen(part.stream)
            pipe.xinfo_groups(part.stream)
            pipe.xpending(part.stream, self.group)
            pipe.xlen(part.dead_letters)
        replies = pipe.execute(raise_on_error=False)  # connection errors still raise
        states = []
        for n, part in enumerate(self.parts):
            length, groups, summary, dead = replies[4 * n : 4 * n + 4]
            for reply in (length, dead):
                if isinstance(reply, Exception):
                    raise reply
            group = self._group_of(groups) if isinstance(groups, list) else None
            pending = summary["pending"] if isinstance(summary, dict) else 0
            states.append(
                GroupState(
                    stream_length=length,
                    group_lag=group.get("lag") if group else length,  # a group yet to be created starts at 0: all
                    pending=pending,
                    oldest_pending_id=self._ref(part, summary["min"]) if pending else None,
                    dead_letters=dead,
                )
            )
        return states

    def consumers(self) -> list[ConsumerInfo]:
        """The group's consumers, each once: its pending entries summed over the partitions, its idle and
        inactive times the shortest of any."""
        merged: dict[str, ConsumerInfo] = {}
        for part in self.parts:
            for c in self.client.xinfo_consumers(part.stream, self.group):
                info = ConsumerInfo(
                    name=as_text(c["name"]), pending=c["pending"], idle_ms=c["idle"], inactive_ms=_inactive_ms(c)
                )
                known = merged.get(info.name)
                merged[info.name] = (
                    info
                    if known is None
                    else ConsumerInfo(
                        name=info.name,
                        pending=known.pending + info.pending,
                        idle_ms=min(known.idle_ms, info.idle_ms),
                        inactive_ms=min(known.inactive_ms, info.inactive_ms),
                    )
                )
        return list(merged.values())

    def delete_consumer(self, name: str) -> bool:
        """Delete consumer `name` if it holds nothing pending (checked and deleted in one step, per partition).
        True if deleted from every partition."""
        return all([bool(self._delete_consumer(keys=[part.stream], args=[self.group, name])) for part in self.parts])

    # --- reads and claims -----------------------------------------------------------------------------------

    def read_own_pending(self, after: str | Mapping[int, str], count: int) -> list[Entry]:
        """This consumer's entries delivered before but not acknowledged, after id `after` (one for every
        partition, or each partition's: a partition not in it from its start)."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return self._read(">", count, block_ms=block_ms)

    def _read(self, start: str | Mapping[int, str], count: int, block_ms: int | None) -> list[Entry]:
        starts = {
            part.stream: start if isinstance(start, str) else start.get(part.partition, "0") for part in self.parts
        }
        per_stream = max(1, -(-count // len(self.parts)))  # XREADGROUP's COUNT is per stream
        if not self.cluster or len(self.parts) == 1:  # one read over every partition's stream
            replies = [self._xreadgroup(starts, per_stream, block_ms)]
        else:  # one read per partition (a multi-key read must stay in one slot); only one of them blocks
            replies = [self._xreadgroup({stream: s}, per_stream, None) for stream, s in starts.items()]
            if block_ms is not None and not any(_stream_messages(reply) for reply in replies):
                self._turn = (self._turn + 1) % len(self.parts)
                stream = self.parts[self._turn].stream
                replies = [self._xreadgroup({stream: starts[stream]}, per_stream, block_ms)]
        entries: list[Entry] = []
        vanished: list[str] = []
        for reply in replies:
            for stream, messages in _stream_messages(reply):
                _collect(self._by_stream[as_text(stream)], self.keys.partitions, messages, entries, vanished)
        self._forget(vanished)
        return entries

    def _xreadgroup(self, streams: dict[str, str], count: int, block_ms: int | None) -> XReadGroupResponse | None:
        with _group_needed():
            # cast: a stream that reads or claims was given its consumer name (so in the methods below)
            # ignore: redis-py types the streams dict[KeyT, StreamIdT], and a dict is invariant
            return self.client.xreadgroup(
                self.group,
                cast(str, self.consumer),
                streams,  # type: ignore[arg-type]
                count=count,
                block=block_ms,
            )

    def reclaim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries that any consumer (a dead one, usually) has left idle for `min_idle_ms`."""
        entries: list[Entry] = []
        vanished: list[str] = []
        for part in self.parts:
            if len(entries) >= count:
                break
            with _group_needed():
                reply = self.client.xautoclaim(
                    part.stream, self.group, cast(str, self.consumer), min_idle_ms, "0-0", count=count - len(entries)
                )
            _collect(part, self.keys.partitions, reply[1], entries, vanished)
            vanished += [self._ref(part, entry_id) for entry_id in (reply[2] if len(reply) > 2 else [])]
        self._forget(vanished)
        return entries

    def retry_own(self, due: Callable[[int, int], bool], count: int) -> list[Entry]:
        """Claim again this consumer's own pending entries that are due for another try: entries that
        failed here (with backoff, by `due(idle_ms, deliveries)`) and entries an operator claimed to it."""
        entries: list[Entry] = []
        vanished: list[str] = []
        for part in self.parts:
            with _group_needed():
                rows = cast(
                    "list[_PendingRow]",
                    self.client.xpending_range(part.stream, self.group, "-", "+", count, consumername=self.consumer),
                )
                ids = [row["message_id"] for row in rows if due(row["time_since_delivered"], row["times_delivered"])]
                if not ids:
                    continue
                claimed = self.client.xclaim(part.stream, self.group, cast(str, self.consumer), 0, ids)  # type: ignore[arg-type]  # see claim_for
            got: list[Entry] = []
            _collect(part, self.keys.partitions, claimed, got, vanished)
            refs = {entry.entry_id for entry in got}
            vanished += [self._ref(part, i) for i in ids if self._ref(part, i) not in refs]  # trimmed from under us
            entries += got
        self._forget(vanished)
        return entries

    def pending(self, count: int, *, min_idle_ms: int | None = None, consumer: str | None = None) -> list[PendingEntry]:
        """The group's pending entries, oldest first (only `consumer`'s, only those idle `min_idle_ms`), each with
        its event id and type, over every partition."""
        found: list[PendingEntry] = []
        for part in self.parts:
            rows = cast(
                "list[_PendingRow]",
                self.client.xpending_range(
                    part.stream, self.group, "-", "+", count, consumername=consumer, idle=min_idle_ms
                ),
            )
            pipe = self.client.pipeline(transaction=False)
            for row in rows:
                pipe.xrange(part.stream, row["message_id"], row["message_id"], count=1)
            fields_of = [
                {
                    as_text(k): as_text(v)
                    for k, v in (result[0][1] if result else {}).items()
                    if as_text(k) in ("event_id", "event_type")
                }  # not the payload: any bytes at all
                for result in pipe.execute()
            ]
            found += [
                PendingEntry(
                    entry_id=self._ref(part, row["message_id"]),
                    event_id=fields.get("event_id"),
                    event_type=fields.get("event_type"),
                    consumer=as_text(row["consumer"]),
                    idle_ms=row["time_since_delivered"],
                    deliveries=row["times_delivered"],
                    partition=part.partition,
                )
                for row, fields in zip(rows, fields_of)
            ]
        if len(self.parts) > 1:
            found.sort(key=lambda entry: id_tuple(entry.entry_id))
        return found[:count]

    def claim_for(self, consumer: str, entry_ids: list[str], idle_ms: int) -> None:
        """Give pending entries (entry refs) to `consumer` (an operator's move: JUSTID, so it is not counted as a
        delivery), as if idle `idle_ms` already."""
        for p, ids in sorted(self._by_part(entry_ids).items()):
            # ignore: redis-py types the ids list[StreamIdT], and a list is invariant: it refuses a list[str]
            self.client.xclaim(
                self.keys.partition(p).stream,
                self.group,
                consumer,
                0,
                ids,  # type: ignore[arg-type]
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
        if not self.keys.tagged:
            pipe.mget([self.keys.seen(entry.event_id) for entry in entries])
            pipe.hmget(self.keys.failures, [entry.entry_id for entry in entries])
            seen, failures = pipe.execute()
            return PriorState(
                processed_event_ids=frozenset(e.event_id for e, value in zip(entries, seen) if value == b"processed"),
                failures={e.entry_id: parse_failure(value) for e, value in zip(entries, failures) if value},
            )
        # Tagged: one MGET per partition of dedupe marks (each in its partition's slot), one HMGET per partition
        # read from.
        events = list(dict.fromkeys(entry.event_id for entry in entries))
        by_mark: dict[int, list[str]] = {}
        for event_id in events:
            by_mark.setdefault(self.keys.partition_of(event_id), []).append(event_id)
        by_entry = self._by_part(entry.entry_id for entry in entries)
        mark_keys = [[self.keys.partition(p).seen(event_id) for event_id in ids] for p, ids in by_mark.items()]
        for keys in mark_keys:
            if self.cluster:  # redis-py refuses MGET in a cluster's pipeline: a GET each, one round trip per node
                for key in keys:
                    pipe.get(key)
            else:
                pipe.mget(keys)
        for p, ids in by_entry.items():
            pipe.hmget(self.keys.partition(p).failures, ids)
        replies = pipe.execute()
        mark_replies = sum(map(len, mark_keys)) if self.cluster else len(mark_keys)
        values = replies[:mark_replies] if self.cluster else [v for got in replies[:mark_replies] for v in got]
        marked = [event_id for ids in by_mark.values() for event_id in ids]  # in the order of `values`
        processed = {event_id for event_id, value in zip(marked, values) if value == b"processed"}
        failures = {
            entry_ref(p, entry_id, self.keys.partitions): parse_failure(value)
            for (p, ids), values in zip(by_entry.items(), replies[mark_replies:])
            for entry_id, value in zip(ids, values)
            if value
        }
        return PriorState(processed_event_ids=frozenset(processed), failures=failures)

    def settle(self, settlement: Settlement) -> bool:
        """Tell Redis what a committed batch did; False when Redis, full, took only what needs no memory (see
        Settler.settle)."""
        with _group_needed():
            return self._settler.settle(settlement)

    def trim(self, retention_ms: int, now_ms: int) -> int:
        """Drop entries older than the retention window that every group has acknowledged; never one
        still pending or not yet delivered. Returns how many were removed, over the partitions."""
        return sum(self._trim(part, retention_ms, now_ms) for part in self.parts)

    def _trim(self, part: StreamKeys, retention_ms: int, now_ms: int) -> int:
        try:
            groups = self.groups(part)
        except redis.ResponseError:  # not a stream
            return 0
        if groups is None:  # no stream yet
            return 0
        keep_from = [(now_ms - retention_ms, 0)]
        for group in groups:
            with _group_needed():  # gone since we listed it
                summary = self.client.xpending(part.stream, group["name"])
            if summary["pending"]:
                keep_from.append(id_tuple(summary["min"]))
            ms, seq = id_tuple(group["last-delivered-id"])
            keep_from.append((ms, seq + 1))  # everything after the last delivered entry is undelivered
        ms, seq = min(keep_from)
        return self.client.xtrim(part.stream, minid=f"{max(ms, 0)}-{seq}", approximate=False)

    def _forget(self, entry_ids: list[str]) -> None:
        """Pending entries (refs) whose data is gone from the stream (trimmed): nothing left to process."""
        for p, ids in self._by_part(entry_ids).items():
            with _group_needed():
                self.client.xack(self.keys.partition(p).stream, self.group, *ids)


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


def _collect(
    part: StreamKeys, partitions: int, messages: Iterable[Any] | None, entries: list[Entry], vanished: list[str]
) -> None:
    """`messages`: a reply's (entry id, fields) pairs from partition `part`, fields None for an entry trimmed from
    the stream; both lists get the entries' refs."""
    for raw_id, fields in messages or []:
        ref = entry_ref(part.partition, raw_id, partitions)
        if fields:
            entries.append(Entry.from_fields(ref, fields))
        else:  # pending, but trimmed from the stream
            vanished.append(ref)


def _stream_messages(reply: XReadGroupResponse | None) -> list[Any]:
    """XREADGROUP's reply as (stream, messages) pairs, from RESP2 or RESP3."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [
            (stream, value[0] if value and isinstance(value[0], list) else value) for stream, value in reply.items()
        ]
    return reply
