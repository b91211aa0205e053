"""The dead-letter stream (DEAD_LETTER_KEY): entries whose handler failed MAX_DELIVERIES times. This module owns
its fields (CONTRACT.md: the entry's, plus `error`, `deliveries`, `first_failed_at` and `source_id`), and the
four things done to it: a settling batch adds letters, ops list them, put them back on the stream, or drop them.
In the hash-tagged layout (billing/keys.py) each partition has its own dead letters (`{<STREAM_KEY>:<p>}:dead`,
in its stream's slot); a letter is then named `<partition>:<id>` when STREAM_PARTITIONS > 1 (entries.entry_ref)
and goes back to the partition it died in."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import cast

import redis

from billing.keys import Keys, StreamKeys
from billing.redis_io import ENTRY_FIELDS
from consumer.entries import DeadLetter, as_text, entry_ref, id_tuple, split_ref


@dataclasses.dataclass(frozen=True)
class StoredLetter:
    """A dead letter as the dead-letter stream holds it."""

    entry_id: str  # in the dead-letter stream (as entry_ref names it)
    event_id: str | None
    event_type: str | None
    error: str | None
    deliveries: int
    first_failed_at: int  # epoch ms
    source_id: str | None  # the entry's id in the stream it failed in
    payload: bytes = dataclasses.field(repr=False)
    fields: Mapping[bytes, bytes] = dataclasses.field(repr=False, compare=False)  # all of them, as stored
    partition: int = 0

    @classmethod
    def from_fields(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes], partition: int = 0) -> "StoredLetter":
        text = {as_text(k): as_text(v) for k, v in fields.items() if as_text(k) != "payload"}
        return cls(
            entry_id=as_text(entry_id),
            event_id=text.get("event_id"),
            event_type=text.get("event_type"),
            error=text.get("error"),
            deliveries=int(text.get("deliveries") or 0),
            first_failed_at=int(text.get("first_failed_at") or 0),
            source_id=text.get("source_id"),
            payload=fields.get(b"payload", b""),
            fields=fields,
            partition=partition,
        )


class DeadLetters:
    def __init__(self, client: redis.Redis, keys: Keys):
        self.client = client
        self.keys = keys

    def add(self, pipe: redis.client.Pipeline, dead: DeadLetter, part: StreamKeys) -> None:
        """Write a letter as part of `pipe` (a batch's settlement: the letter, and the entry's XACK, in one MULTI),
        in the dead letters of partition `part` (`dead.entry.entry_id`: its id in that partition's stream)."""
        entry = dead.entry
        pipe.xadd(
            part.dead_letters,
            {
                "event_id": entry.event_id,
                "event_type": entry.event_type,
                "created": entry.created,
                "payload": entry.payload,
                "received_at": entry.received_at_ms,
                "error": dead.error[:4000],
                "deliveries": dead.failure.count,
                "first_failed_at": dead.failure.first_failed_ms,
                "source_id": entry.entry_id,
            },
        )

    def read(self, count: int | None = None) -> list[StoredLetter]:
        """The oldest `count` letters (all of them with None), of every partition."""
        letters = [
            self._letter(part, entry_id, fields)
            for part in self.keys.all_partitions
            for entry_id, fields in self._range(part, "-", "+", count)
        ]
        if self.keys.partitions > 1:
            letters.sort(key=lambda letter: id_tuple(letter.entry_id))
        return letters[:count] if count is not None else letters

    def _letter(self, part: StreamKeys, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> StoredLetter:
        ref = entry_ref(part.partition, entry_id, self.keys.partitions)
        return StoredLetter.from_fields(ref, fields, part.partition)

    def _range(
        self, part: StreamKeys, start: str, end: str, count: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        # Our clients read bytes (no decode_responses): redis-py's own type allows str and None as well.
        return cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(part.dead_letters, start, end, count=count)
        )

    def get(self, entry_ids: Iterable[str]) -> tuple[list[StoredLetter], list[str]]:
        """The letters of `entry_ids` (entry_ref's form; the same id twice is one letter), and the ids that name
        none."""
        letters, unknown = [], []
        for ref in dict.fromkeys(entry_ids):
            try:
                if self.keys.partitions > 1 and ":" not in ref:
                    raise ValueError("a dead letter of several partitions is named <partition>:<id>")
                p, entry_id = split_ref(ref) if self.keys.partitions > 1 else (0, ref)
                part = self.keys.partition(p)
                found = self._range(part, entry_id, entry_id, 1)
            except (ValueError, redis.ResponseError):  # not a partition, or not an entry id at all
                found = []
            if found:
                letters.append(self._letter(part, entry_id, found[0][1]))
            else:
                unknown.append(ref)
        return letters, unknown

    def retry(self, letters: list[StoredLetter]) -> list[str]:
        """Put the letters back on the stream as new entries with the fields they came with (the database decides
        whether their events were applied already), and delete them, in one MULTI (one per partition: a letter goes
        back to the partition it died in, the slot of its dead letters). The new entries' ids (entry_ref's form)."""
        new_ids: dict[str, str] = {}
        for p in sorted({letter.partition for letter in letters}):
            part = self.keys.partition(p)
            mine = [letter for letter in letters if letter.partition == p]
            pipe = self.client.pipeline(transaction=True)
            for letter in mine:
                pipe.xadd(
                    part.stream,
                    {name: letter.fields[name.encode()] for name in ENTRY_FIELDS if name.encode() in letter.fields},
                )
                pipe.xdel(part.dead_letters, split_ref(letter.entry_id)[1])
            results = pipe.execute()
            for i, letter in enumerate(mine):
                new_ids[letter.entry_id] = entry_ref(p, results[2 * i], self.keys.partitions)
        return [new_ids[letter.entry_id] for letter in letters]

    def drop(self, letters: list[StoredLetter]) -> None:
        """Delete the letters for good. Their events' dedupe marks go first: otherwise a resend from Stripe's
        dashboard would be answered `duplicate` for DEDUPE_TTL_SECONDS (their rows are `dead`, which a consumer
        takes over). One round trip, not a MULTI: Redis refuses no DEL or XDEL when it is full, but any MULTI."""
        pipe = self.client.pipeline(transaction=False)
        event_ids = [letter.event_id for letter in letters if letter.event_id]
        if event_ids and self.keys.tagged:  # one DEL per key: each is in its own partition's slot
            for event_id in event_ids:
                pipe.delete(self.keys.seen(event_id))
        elif event_ids:
            pipe.delete(*[self.keys.seen(event_id) for event_id in event_ids])
        for p in sorted({letter.partition for letter in letters}):
            ids = [split_ref(letter.entry_id)[1] for letter in letters if letter.partition == p]
            pipe.xdel(self.keys.partition(p).dead_letters, *ids)
        pipe.execute()
