"""What ops can see and do to the stream, as plain functions returning plain data; `cli.py` shows it.
The stream (consumer/stream.py) and its dead letters (consumer/dead_letters.py) do the Redis side; this combines
them and writes an audit row for every manual action: who (the OS user), what, which entries."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import time
from typing import Any

import redis

from billing.config import Settings
from billing.keys import StreamKeys
from consumer.dead_letters import DeadLetters, StoredLetter
from consumer.entries import as_text, entry_ref, id_tuple
from consumer.stream import EventStream
from models.tables import AuditLog


class OpsError(Exception):
    """Something an operator asked for cannot be done; the message is the one line to show."""


def stats(client: redis.Redis, settings: Settings, now_ms: int | None = None) -> dict[str, Any]:
    """The group's figures, summed over the partitions (with STREAM_PARTITIONS > 1, each partition's too)."""
    now_ms = now_ms or int(time.time() * 1000)
    stream = EventStream(client, settings)
    groups = [_group_info(stream, part) for part in stream.parts]
    states = stream.partition_states()
    state = stream.group_state()  # the same figures the consumers' gauges show
    consumers = stream.consumers()
    oldest_ms = state.oldest_pending_ms
    last_delivered = [
        entry_ref(part.partition, group["last-delivered-id"], settings.stream_partitions)
        for part, group in zip(stream.parts, groups)
    ]
    data = {
        "stream": stream.keys.stream,
        "group": stream.group,
        "stream_length": state.stream_length,
        "group_lag": state.group_lag,
        "last_delivered_id": max(last_delivered, key=id_tuple),
        "pending": state.pending,
        "oldest_pending_id": state.oldest_pending_id,
        "oldest_pending_age_seconds": round((now_ms - oldest_ms) / 1000, 3) if oldest_ms is not None else None,
        "dead_letters": state.dead_letters,
        "consumers": [dataclasses.asdict(consumer) for consumer in consumers],
    }
    if settings.stream_partitions > 1:
        data["partitions"] = [
            {
                "partition": part.partition,
                "stream": part.stream,
                "stream_length": one.stream_length,
                "group_lag": one.group_lag,
                "last_delivered_id": last,
                "pending": one.pending,
                "oldest_pending_id": one.oldest_pending_id,
                "dead_letters": one.dead_letters,
            }
            for part, one, last in zip(stream.parts, states, last_delivered)
        ]
    return data


def pending(
    client: redis.Redis,
    settings: Settings,
    *,
    min_idle_ms: int | None = None,
    consumer: str | None = None,
    count: int = 50,
) -> list[dict[str, Any]]:
    """Pending entries of every partition, oldest first; with STREAM_PARTITIONS > 1 each names its partition (and
    its id is `<partition>:<id>`)."""
    stream = EventStream(client, settings)
    for part in stream.parts:
        _group_info(stream, part)
    rows = [dataclasses.asdict(entry) for entry in stream.pending(count, min_idle_ms=min_idle_ms, consumer=consumer)]
    if settings.stream_partitions == 1:
        for row in rows:
            del row["partition"]
    return rows


def claim(
    client: redis.Redis,
    settings: Settings,
    to: str,
    *,
    entry_ids: list[str] | None = None,
    min_idle_ms: int | None = None,
    dry_run: bool = False,
    new_consumer: bool = False,
) -> list[dict[str, Any]]:
    """Move pending entries, by id or by idle time, to consumer `to`; it applies them on its next tick.
    `to` must be a consumer of the group (a typo would park the entries where nobody reads them),
    unless `new_consumer` says it is one about to start."""
    stream = EventStream(client, settings)
    for part in stream.parts:
        _group_info(stream, part)
    known = [consumer.name for consumer in stream.consumers()]
    if to not in known and not new_consumer:
        raise OpsError(
            f"no consumer {to!r} in group {settings.consumer_group} (consumers: "
            f"{', '.join(known) or 'none'}); pass --new-consumer to give entries to one not started yet"
        )
    if entry_ids:
        moving = [row for row in pending(client, settings, count=10_000) if row["entry_id"] in set(entry_ids)]
        unknown = sorted(set(entry_ids) - {row["entry_id"] for row in moving})
        if unknown:
            raise OpsError(f"not pending in group {settings.consumer_group}: {', '.join(unknown)}")
    else:
        moving = pending(client, settings, min_idle_ms=min_idle_ms, count=10_000)
    if dry_run or not moving:
        return moving
    ids = [row["entry_id"] for row in moving]
    # IDLE of CLAIM_IDLE_MS/2, the cap of a consumer's retry backoff: `to` retries its own entries only once they
    # are idle that long, so with a fresh idle time an entry delivered a few times before would wait up to
    # CLAIM_IDLE_MS/2; this way `to` applies it on its next tick.
    stream.claim_for(to, ids, idle_ms=settings.claim_idle_ms // 2)
    audit("ops_claim", {"to": to, "entries": ids, "min_idle_ms": min_idle_ms})
    return moving


def dead_list(client: redis.Redis, settings: Settings, count: int = 100) -> list[dict[str, Any]]:
    return [_dead_row(letter, settings.stream_partitions) for letter in DeadLetters(client, settings.keys).read(count)]


def dead_retry(client: redis.Redis, settings: Settings, entry_ids: list[str] | None) -> list[dict[str, Any]]:
    """Put dead letters back on the stream as new entries (the database decides if they already applied)."""
    dead_letters = DeadLetters(client, settings.keys)
    letters = _dead_letters(dead_letters, entry_ids)
    if not letters:
        return []
    new_ids = dead_letters.retry(letters)
    retried = [
        {**_dead_row(letter, settings.stream_partitions), "new_entry_id": new_id}
        for letter, new_id in zip(letters, new_ids)
    ]
    audit(
        "ops_dead_retry",
        {
            "entries": [r["entry_id"] for r in retried],
            "new_entries": [r["new_entry_id"] for r in retried],
            "event_ids": [r["event_id"] for r in retried],
        },
    )
    return retried


def dead_drop(client: redis.Redis, settings: Settings, entry_ids: list[str]) -> list[dict[str, Any]]:
    dead_letters = DeadLetters(client, settings.keys)
    letters = _dead_letters(dead_letters, entry_ids)
    dropped = [_dead_row(letter, settings.stream_partitions) for letter in letters]
    # The audit row first: once the letters are deleted it is the only copy of their payloads.
    audit(
        "ops_dead_drop",
        {
            "entries": [r["entry_id"] for r in dropped],
            "event_ids": [r["event_id"] for r in dropped],
            "payloads": [letter.payload.decode("utf-8", "replace") for letter in letters],
        },
    )
    dead_letters.drop(letters)  # and their events' dedupe marks, so a resend from Stripe's dashboard is applied
    return dropped


def prune_consumers(
    client: redis.Redis, settings: Settings, min_idle_ms: int, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Delete consumers with nothing pending that have been idle at least `min_idle_ms`."""
    stream = EventStream(client, settings)
    _group_info(stream)
    rows: list[dict[str, Any]] = [
        {"name": consumer.name, "idle_ms": consumer.inactive_ms}
        for consumer in stream.consumers()
        if consumer.pending == 0 and consumer.inactive_ms >= min_idle_ms
    ]
    if rows and not dry_run:
        # A consumer that read entries since we looked keeps them (deleting one drops its pending entries for good).
        rows = [row for row in rows if stream.delete_consumer(row["name"])]
        if rows:
            audit("ops_consumers_prune", {"consumers": [r["name"] for r in rows], "min_idle_ms": min_idle_ms})
    return rows


def audit(action: str, details: dict[str, Any], community_id: str | None = None) -> None:
    AuditLog.create(
        event_type=action, community_id=community_id, event_data=json.dumps({"who": _who(), **details}, sort_keys=True)
    )


def _who() -> str:
    """The person: under sudo, who ran sudo, not the service account it switched to."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return getpass.getuser()
    except Exception:  # no user name in a bare container
        return "unknown"


def _group_info(stream: EventStream, part: StreamKeys | None = None) -> dict[str, Any]:
    part = part or stream.parts[0]
    try:
        groups = stream.groups(part)
    except redis.ResponseError:  # the key is something else than a stream
        groups = None
    if groups is None:
        raise OpsError(f"no stream {part.stream!r} (no event has been received yet, or Redis lost it)")
    for group in groups:
        if as_text(group["name"]) == stream.group:
            return group
    raise OpsError(f"no consumer group {stream.group!r} on {part.stream!r} (no consumer has run yet)")


def _dead_letters(dead_letters: DeadLetters, entry_ids: list[str] | None) -> list[StoredLetter]:
    if entry_ids is None:
        return dead_letters.read()
    letters, unknown = dead_letters.get(entry_ids)
    if unknown:
        where = dead_letters.keys.dead_letters if not dead_letters.keys.tagged else "the partitions' dead letters"
        raise OpsError(f"no dead letter {', '.join(unknown)} in {where}")
    return letters


def _dead_row(letter: StoredLetter, partitions: int = 1) -> dict[str, Any]:
    row: dict[str, Any] = {
        "entry_id": letter.entry_id,
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "error": letter.error,
        "deliveries": letter.deliveries,
        "first_failed_at": letter.first_failed_at,
        "source_id": letter.source_id,
    }
    if partitions > 1:  # its id names it too (`<partition>:<id>`)
        row["partition"] = letter.partition
    return row
