"""The Redis Streams mechanics, in one place: group creation, reads, and settling a batch.
Handlers and the batch logic never speak Redis; they get Entry values and return outcomes."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import redis

from billing.config import Settings
from billing.redis_io import invalidate_entitlements, is_memory_refusal

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Entry:
    entry_id: str
    event_id: str
    event_type: str
    created: int
    payload: bytes
    received_at_ms: int

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict) -> "Entry":
        def text(name: str) -> str:
            value = fields.get(name.encode(), fields.get(name, b""))
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)

        def number(name: str) -> int:
            try:
                return int(float(text(name) or 0))
            except (ValueError, OverflowError):  # not a number, or "1e400"/"inf" from an entry written by hand
                return 0

        payload = fields.get(b"payload", fields.get("payload", b""))
        return cls(
            entry_id=entry_id,
            event_id=text("event_id"),
            event_type=text("event_type"),
            created=number("created"),
            payload=payload if isinstance(payload, bytes) else str(payload).encode(),
            received_at_ms=number("received_at") or int(entry_id.split("-")[0]),
        )

    @property
    def enqueued_at(self) -> float:
        """Epoch seconds at which the entry entered the stream (its id's time)."""
        return int(self.entry_id.split("-")[0]) / 1000


@dataclasses.dataclass(frozen=True)
class Failure:
    """How often an entry's handler has failed, and since when (epoch ms)."""

    count: int
    first_failed_ms: int


@dataclasses.dataclass(frozen=True)
class PriorState:
    processed_event_ids: frozenset[str] = frozenset()
    failures: Mapping[str, Failure] = dataclasses.field(default_factory=dict)  # by entry id


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    entry: Entry
    error: str
    failure: Failure


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What to tell Redis once a batch has committed."""

    ack_ids: tuple[str, ...] = ()  # entries whose event is applied (or recognised as already applied)
    processed_event_ids: tuple[str, ...] = ()
    changed_communities: tuple[str, ...] = ()
    failures: Mapping[str, Failure] = dataclasses.field(default_factory=dict)  # failed, still pending
    dead: tuple[DeadLetter, ...] = ()
    cleared_failures: tuple[str, ...] = ()  # entries settled now that had failed before


@dataclasses.dataclass(frozen=True)
class GroupState:
    """The whole group's backlog at one moment (what the consumers' gauges show)."""

    stream_length: int
    group_lag: int | None  # None when Redis cannot count it
    pending: int
    oldest_pending_id: str | None  # None when none is pending
    dead_letters: int

    @property
    def oldest_pending_ms(self) -> int | None:
        """The id time of the oldest pending entry (when it was queued)."""
        return id_tuple(self.oldest_pending_id)[0] if self.oldest_pending_id else None


def read_group_state(client: redis.Redis, settings: Settings) -> GroupState:
    """In one round trip. A stream or group that does not exist yet reads as empty."""
    keys = settings.keys
    pipe = client.pipeline(transaction=False)
    pipe.xlen(keys.stream)
    pipe.xinfo_groups(keys.stream)
    pipe.xpending(keys.stream, settings.consumer_group)
    pipe.xlen(keys.dead_letters)
    length, groups, summary, dead = pipe.execute(raise_on_error=False)  # connection errors still raise
    for reply in (length, dead):
        if isinstance(reply, Exception):
            raise reply
    group = next((g for g in groups if as_text(g["name"]) == settings.consumer_group), None) \
        if isinstance(groups, list) else None
    pending = summary["pending"] if isinstance(summary, dict) else 0
    return GroupState(
        stream_length=length,
        group_lag=group.get("lag") if group else length,  # a group yet to be created starts at 0: all of it
        pending=pending,
        oldest_pending_id=as_text(summary["min"]) if pending else None,
        dead_letters=dead,
    )


class EventStream:
    def __init__(self, client: redis.Redis, settings: Settings, consumer: str):
        self.client = client
        self.keys = settings.keys
        self.group = settings.consumer_group
        self.consumer = consumer
        self.dedupe_ttl_seconds = settings.dedupe_ttl_seconds
        self._settle_script = client.register_script(_SETTLE_WITHOUT_MEMORY)

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
        try:
            groups = self.client.xinfo_groups(self.keys.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():  # no stream yet
                return False
            raise
        return any(as_text(group["name"]) == self.group for group in groups)

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        """This consumer's entries delivered before but not acknowledged, after id `after`."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return self._read(">", count, block_ms=block_ms)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.keys.stream: start}, count=count, block=block_ms
        )
        entries, vanished = [], []
        for _stream, messages in _stream_messages(reply):
            _collect(messages, entries, vanished)
        self._forget(vanished)
        return entries

    def reclaim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries that any consumer (a dead one, usually) has left idle for `min_idle_ms`."""
        reply = self.client.xautoclaim(self.keys.stream, self.group, self.consumer, min_idle_ms, "0-0", count=count)
        entries, vanished = [], []
        _collect(reply[1], entries, vanished)
        self._forget(vanished + [as_text(entry_id) for entry_id in (reply[2] if len(reply) > 2 else [])])
        return entries

    def retry_own(self, due: Callable[[int, int], bool], count: int) -> list[Entry]:
        """Claim again this consumer's own pending entries that are due for another try: entries that
        failed here (with backoff, by `due(idle_ms, deliveries)`) and entries an operator claimed to it."""
        rows = self.client.xpending_range(self.keys.stream, self.group, "-", "+", count, consumername=self.consumer)
        ids = [row["message_id"] for row in rows if due(row["time_since_delivered"], row["times_delivered"])]
        if not ids:
            return []
        entries, vanished = [], []
        _collect(self.client.xclaim(self.keys.stream, self.group, self.consumer, 0, ids), entries, vanished)
        claimed = {entry.entry_id for entry in entries}
        self._forget([as_text(i) for i in ids if as_text(i) not in claimed])  # trimmed from under us
        return entries

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
        """After the commit, in one atomic step (one round trip): remember the events as processed, drop the
        changed communities' cached entitlements, move dead letters, count failures, acknowledge.

        When Redis refuses that for memory (at maxmemory, with noeviction, it queues nothing in a MULTI),
        settles what needs no memory, in one script: drops the cached entitlements, clears failure counts and
        acknowledges the entries that are done, so the stream can still be trimmed and Redis can get out of
        being full. No processed marks then (an event's mark is only ever written
        with its batch's invalidations), no failure counts, and dead entries stay pending until their dead
        letter can be written. Returns False in that case, True when everything was settled."""
        try:
            self._settle_all(settlement)
            return True
        except redis.ResponseError as exc:
            if not is_memory_refusal(exc):
                raise
            log.warning("Redis refused the settlement for memory (%s); acknowledging %d done entries without "
                        "their dedupe marks, %d failed and %d dead entries stay pending", exc,
                        len(settlement.ack_ids), len(settlement.failures), len(settlement.dead))
        self._settle_without_memory(settlement)
        return False

    def _settle_all(self, settlement: Settlement) -> None:
        pipe = self.client.pipeline(transaction=True)
        for event_id in settlement.processed_event_ids:
            pipe.set(self.keys.seen(event_id), "processed", ex=self.dedupe_ttl_seconds)
        for community_id in settlement.changed_communities:
            invalidate_entitlements(pipe, self.keys, community_id)
        for dead in settlement.dead:
            pipe.xadd(self.keys.dead_letters, dead_letter_fields(dead))
        if settlement.failures:
            pipe.hset(self.keys.failures,
                      mapping={k: f"{v.count}:{v.first_failed_ms}" for k, v in settlement.failures.items()})
        cleared = settlement.cleared_failures + tuple(d.entry.entry_id for d in settlement.dead)
        if cleared:
            pipe.hdel(self.keys.failures, *cleared)
        ack_ids = settlement.ack_ids + tuple(d.entry.entry_id for d in settlement.dead)
        if ack_ids:
            pipe.xack(self.keys.stream, self.group, *ack_ids)
        pipe.execute()

    def _settle_without_memory(self, settlement: Settlement) -> None:
        """Only commands Redis never refuses for memory (DEL, HDEL, XACK), in one atomic step. A script, not a
        MULTI: a full Redis refuses to queue any command at all in a MULTI."""
        cache_keys = [key for community_id in settlement.changed_communities
                      for key in self.keys.entitlements(community_id)]
        self._settle_script(keys=[self.keys.stream, self.keys.failures, *cache_keys],
                            args=[self.group, len(settlement.cleared_failures), *settlement.cleared_failures,
                                  *settlement.ack_ids])

    def trim(self, retention_ms: int, now_ms: int) -> int:
        """Drop entries older than the retention window that every group has acknowledged; never one
        still pending or not yet delivered. Returns how many were removed."""
        try:
            groups = self.client.xinfo_groups(self.keys.stream)
        except redis.ResponseError:  # no stream yet
            return 0
        keep_from = [(now_ms - retention_ms, 0)]
        for group in groups:
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
            self.client.xack(self.keys.stream, self.group, *entry_ids)


# KEYS: stream, failures hash, then the cache keys to delete. ARGV: group, how many failure entries to clear,
# those entry ids, then the entry ids to acknowledge. In chunks: Lua's unpack() has a limit.
_SETTLE_WITHOUT_MEMORY = """
local function in_chunks(command, key, group, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + 999, to)
    if group then
      redis.call(command, key, group, unpack(ARGV, i, j))
    else
      redis.call(command, key, unpack(ARGV, i, j))
    end
    i = j + 1
  end
end
for i = 3, #KEYS do
  redis.call('DEL', KEYS[i])
end
local cleared = tonumber(ARGV[2])
in_chunks('HDEL', KEYS[2], nil, 3, 2 + cleared)
in_chunks('XACK', KEYS[1], ARGV[1], 3 + cleared, #ARGV)
return 1
"""


def parse_failure(value: bytes | str) -> Failure:
    count, _, first = as_text(value).partition(":")
    return Failure(int(count or 0), int(first or 0))


def dead_letter_fields(dead: DeadLetter) -> dict[str, str | bytes | int]:
    entry = dead.entry
    return {
        "event_id": entry.event_id, "event_type": entry.event_type, "created": entry.created,
        "payload": entry.payload, "received_at": entry.received_at_ms,
        "error": dead.error[:4000], "deliveries": dead.failure.count,
        "first_failed_at": dead.failure.first_failed_ms, "source_id": entry.entry_id,
    }


def _collect(messages, entries: list[Entry], vanished: list[str]) -> None:
    for raw_id, fields in messages or []:
        if fields:
            entries.append(Entry.from_fields(as_text(raw_id), fields))
        else:  # pending, but trimmed from the stream
            vanished.append(as_text(raw_id))


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = as_text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _stream_messages(reply) -> list:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(stream, value[0] if value and isinstance(value[0], list) else value)
                for stream, value in reply.items()]
    return reply
