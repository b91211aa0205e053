"""The values the stream mechanics (consumer/stream.py, consumer/dead_letters.py) and the batch logic speak in:
entries read from the stream, what a batch leaves to settle, and what ops see of the group. No Redis here."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Entry:
    entry_id: str  # as `entry_ref` names it: `<partition>:<id in its stream>` when STREAM_PARTITIONS > 1
    event_id: str
    event_type: str
    created: int
    payload: bytes
    received_at_ms: int

    @classmethod
    def from_fields(cls, entry_id: str, fields: Mapping[Any, Any]) -> "Entry":
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
            received_at_ms=number("received_at") or id_tuple(entry_id)[0],
        )

    @property
    def enqueued_at(self) -> float:
        """Epoch seconds at which the entry entered the stream (its id's time)."""
        return id_tuple(self.entry_id)[0] / 1000


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


@dataclasses.dataclass(frozen=True)
class PendingEntry:
    """An entry delivered and not acknowledged: who holds it, since when, how often delivered. Its event id and type
    are None when the entry is gone from the stream (trimmed)."""

    entry_id: str  # as `entry_ref` names it
    event_id: str | None
    event_type: str | None
    consumer: str
    idle_ms: int
    deliveries: int
    partition: int = 0


@dataclasses.dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int  # since it last tried to read or claim
    inactive_ms: int  # since it last read or claimed something


def parse_failure(value: bytes | str) -> Failure:
    count, _, first = as_text(value).partition(":")
    return Failure(int(count or 0), int(first or 0))


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    """An entry id (or an `entry_ref`: its partition is not part of the order) as (ms, seq)."""
    ms, _, seq = as_text(entry_id).rpartition(":")[2].partition("-")
    return int(ms), int(seq or 0)


def entry_ref(partition: int, entry_id: bytes | str, partitions: int) -> str:
    """How an entry is named outside its stream (in batches, settlements, ops' tables and arguments): its id, and
    with STREAM_PARTITIONS > 1 its partition first, `<partition>:<id>` (`2:1700000000000-0`), since the same id can
    be in two partitions' streams."""
    return f"{partition}:{as_text(entry_id)}" if partitions > 1 else as_text(entry_id)


def split_ref(ref: str) -> tuple[int, str]:
    """An `entry_ref` as (partition, id in the partition's stream); a plain id is partition 0's. Raises ValueError
    when the partition is not a number."""
    partition, sep, entry_id = ref.partition(":")
    if not sep:
        return 0, ref
    if not partition.isdigit():
        raise ValueError(f"{ref!r}: expected <partition>:<entry id>")
    return int(partition), entry_id
