"""The Redis Streams mechanics, in one place: group creation, reads, and settling a batch.
Handlers and the batch logic never speak Redis; they get Entry values and return outcomes."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import redis

from models.redis_io import entitlement_key, seen_key


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
            except ValueError:
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
class Settlement:
    """What to tell Redis once a batch has committed."""

    ack_ids: tuple[str, ...]  # entries whose event is applied (or recognised as already applied)
    processed_event_ids: tuple[str, ...]
    changed_communities: tuple[str, ...]


class EventStream:
    def __init__(self, client: redis.Redis, stream_key: str, group: str, consumer: str, dedupe_ttl_seconds: int):
        self.client = client
        self.stream_key = stream_key
        self.group = group
        self.consumer = consumer
        self.dedupe_ttl_seconds = dedupe_ttl_seconds

    def ensure_group(self) -> bool:
        """Create the group at the stream's start (so events queued before any consumer ran are read),
        creating the stream too. True if it was created now."""
        try:
            self.client.xgroup_create(self.stream_key, self.group, id="0", mkstream=True)
            return True
        except redis.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise

    def read_own_pending(self, after: str, count: int) -> list[Entry]:
        """This consumer's entries delivered before but not acknowledged, after id `after`."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        return self._read(">", count, block_ms=block_ms)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream_key: start}, count=count, block=block_ms
        )
        entries, vanished = [], []
        for _stream, messages in _stream_messages(reply):
            for raw_id, fields in messages:
                entry_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
                if fields:
                    entries.append(Entry.from_fields(entry_id, fields))
                else:  # pending, but trimmed from the stream: nothing left to process
                    vanished.append(entry_id)
        if vanished:
            self.client.xack(self.stream_key, self.group, *vanished)
        return entries

    def processed_event_ids(self, entries: Iterable[Entry]) -> set[str]:
        """The fast path: events Redis remembers as processed (the database stays the lasting truth)."""
        event_ids = [entry.event_id for entry in entries]
        if not event_ids:
            return set()
        keys = [seen_key(self.stream_key, event_id) for event_id in event_ids]
        values = self.client.mget(keys)
        return {event_id for event_id, value in zip(event_ids, values) if value == b"processed"}

    def settle(self, settlement: Settlement) -> None:
        """After the commit, in one round trip: remember the events as processed, drop the changed
        communities' cached entitlements, and only then acknowledge the entries."""
        pipe = self.client.pipeline(transaction=True)
        for event_id in settlement.processed_event_ids:
            pipe.set(seen_key(self.stream_key, event_id), "processed", ex=self.dedupe_ttl_seconds)
        for community_id in settlement.changed_communities:
            pipe.delete(entitlement_key(community_id))
        if settlement.ack_ids:
            pipe.xack(self.stream_key, self.group, *settlement.ack_ids)
        pipe.execute()


def _stream_messages(reply) -> list:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [(stream, value[0] if value and isinstance(value[0], list) else value) for stream, value in reply.items()]
    return reply
