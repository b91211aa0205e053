"""What ops can see and do to the stream, as plain functions returning plain data; `cli.py` shows it.
Every manual action writes an audit row: who (the OS user), what, which entries."""
from __future__ import annotations

import getpass
import json
import os
import time
from typing import Any

import redis

from billing.config import Settings
from billing.redis_io import ENTRY_FIELDS
from consumer.stream import as_text, read_group_state
from models.tables import AuditLog


class OpsError(Exception):
    """Something an operator asked for cannot be done; the message is the one line to show."""


def stats(client: redis.Redis, settings: Settings, now_ms: int | None = None) -> dict[str, Any]:
    now_ms = now_ms or int(time.time() * 1000)
    group = _group_info(client, settings)
    state = read_group_state(client, settings)  # the same figures the consumers' gauges show
    consumers = client.xinfo_consumers(settings.keys.stream, settings.consumer_group)
    oldest_ms = state.oldest_pending_ms
    return {
        "stream": settings.keys.stream,
        "group": settings.consumer_group,
        "stream_length": state.stream_length,
        "group_lag": state.group_lag,
        "last_delivered_id": as_text(group["last-delivered-id"]),
        "pending": state.pending,
        "oldest_pending_id": state.oldest_pending_id,
        "oldest_pending_age_seconds": round((now_ms - oldest_ms) / 1000, 3) if oldest_ms is not None else None,
        "dead_letters": state.dead_letters,
        "consumers": [
            {"name": as_text(c["name"]), "pending": c["pending"], "idle_ms": c["idle"],
             "inactive_ms": _inactive_ms(c)}
            for c in consumers
        ],
    }


def pending(client: redis.Redis, settings: Settings, *, min_idle_ms: int | None = None,
            consumer: str | None = None, count: int = 50) -> list[dict[str, Any]]:
    _group_info(client, settings)
    rows = client.xpending_range(settings.keys.stream, settings.consumer_group, "-", "+", count,
                                 consumername=consumer, idle=min_idle_ms)
    fields = _fields_of(client, settings.keys.stream, [row["message_id"] for row in rows])
    return [
        {"entry_id": as_text(row["message_id"]),
         "event_id": fields[i].get("event_id"), "event_type": fields[i].get("event_type"),
         "consumer": as_text(row["consumer"]), "idle_ms": row["time_since_delivered"],
         "deliveries": row["times_delivered"]}
        for i, row in enumerate(rows)
    ]


def claim(client: redis.Redis, settings: Settings, to: str, *, entry_ids: list[str] | None = None,
          min_idle_ms: int | None = None, dry_run: bool = False, new_consumer: bool = False) -> list[dict[str, Any]]:
    """Move pending entries, by id or by idle time, to consumer `to`; it applies them on its next tick.
    `to` must be a consumer of the group (a typo would park the entries where nobody reads them),
    unless `new_consumer` says it is one about to start."""
    known = [as_text(c["name"]) for c in client.xinfo_consumers(settings.keys.stream, settings.consumer_group)] \
        if _group_info(client, settings) else []
    if to not in known and not new_consumer:
        raise OpsError(f"no consumer {to!r} in group {settings.consumer_group} (consumers: "
                       f"{', '.join(known) or 'none'}); pass --new-consumer to give entries to one not started yet")
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
    # JUSTID: a manual move is not a delivery. IDLE of CLAIM_IDLE_MS/2, the cap of a consumer's retry backoff:
    # `to` retries its own entries only once they are idle that long, so with a fresh idle time an entry
    # delivered a few times before would wait up to CLAIM_IDLE_MS/2; this way `to` applies it on its next tick.
    client.xclaim(settings.keys.stream, settings.consumer_group, to, 0, ids, idle=settings.claim_idle_ms // 2,
                  justid=True)
    audit("ops_claim", {"to": to, "entries": ids, "min_idle_ms": min_idle_ms})
    return moving


def dead_list(client: redis.Redis, settings: Settings, count: int = 100) -> list[dict[str, Any]]:
    return [_dead_row(entry_id, fields) for entry_id, fields in client.xrange(settings.keys.dead_letters, count=count)]


def dead_retry(client: redis.Redis, settings: Settings, entry_ids: list[str] | None) -> list[dict[str, Any]]:
    """Put dead letters back on the stream as new entries (the database decides if they already applied)."""
    letters = _dead_letters(client, settings, entry_ids)
    if not letters:
        return []
    pipe = client.pipeline(transaction=True)
    for entry_id, fields in letters:
        pipe.xadd(settings.keys.stream,
                  {name: fields[name.encode()] for name in ENTRY_FIELDS if name.encode() in fields})
        pipe.xdel(settings.keys.dead_letters, entry_id)
    results = pipe.execute()
    retried = [{**_dead_row(entry_id, fields), "new_entry_id": as_text(results[2 * i])}
               for i, (entry_id, fields) in enumerate(letters)]
    audit("ops_dead_retry", {"entries": [r["entry_id"] for r in retried],
                             "new_entries": [r["new_entry_id"] for r in retried],
                             "event_ids": [r["event_id"] for r in retried]})
    return retried


def dead_drop(client: redis.Redis, settings: Settings, entry_ids: list[str]) -> list[dict[str, Any]]:
    letters = _dead_letters(client, settings, entry_ids)
    dropped = [_dead_row(entry_id, fields) for entry_id, fields in letters]
    # The audit row first: once the entries are deleted it is the only copy of their payloads.
    audit("ops_dead_drop", {"entries": [r["entry_id"] for r in dropped], "event_ids": [r["event_id"] for r in dropped],
                            "payloads": [fields[b"payload"].decode("utf-8", "replace") for _, fields in letters]})
    # Forget the events' dedupe marks first: otherwise a resend from Stripe's dashboard would be answered
    # `duplicate` for DEDUPE_TTL_SECONDS (their rows are `dead`, which a consumer takes over). Then the letters.
    # One round trip, not a MULTI: Redis refuses no DEL or XDEL when it is full, but any MULTI.
    pipe = client.pipeline(transaction=False)
    event_ids = [r["event_id"] for r in dropped if r["event_id"]]
    if event_ids:
        pipe.delete(*[settings.keys.seen(event_id) for event_id in event_ids])
    pipe.xdel(settings.keys.dead_letters, *[entry_id for entry_id, _ in letters])
    pipe.execute()
    return dropped


def prune_consumers(client: redis.Redis, settings: Settings, min_idle_ms: int, dry_run: bool = False) -> list[dict]:
    """Delete consumers with nothing pending that have been idle at least `min_idle_ms`."""
    _group_info(client, settings)
    idle = [c for c in client.xinfo_consumers(settings.keys.stream, settings.consumer_group)
            if c["pending"] == 0 and _inactive_ms(c) >= min_idle_ms]
    rows = [{"name": as_text(c["name"]), "idle_ms": _inactive_ms(c)} for c in idle]
    if rows and not dry_run:
        delete = client.register_script(_DELETE_IF_NOTHING_PENDING)
        rows = [row for row in rows if delete(keys=[settings.keys.stream], args=[settings.consumer_group, row["name"]])]
        if rows:
            audit("ops_consumers_prune", {"consumers": [r["name"] for r in rows], "min_idle_ms": min_idle_ms})
    return rows


# Checked and deleted in one step: a consumer that read entries since we looked keeps them (deleting a
# consumer drops its pending entries from the group for good).
_DELETE_IF_NOTHING_PENDING = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return 0
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) + 1
"""


def failure_counts(client: redis.Redis, settings: Settings) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in client.hgetall(settings.keys.failures).items()}


def audit(action: str, details: dict[str, Any], community_id: str | None = None) -> None:
    AuditLog.create(event_type=action, community_id=community_id,
                    event_data=json.dumps({"who": _who(), **details}, sort_keys=True))


def _who() -> str:
    """The person: under sudo, who ran sudo, not the service account it switched to."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return getpass.getuser()
    except Exception:  # no user name in a bare container
        return "unknown"


def _inactive_ms(consumer: dict[str, Any]) -> int:
    """Since the consumer last read or claimed something. Redis 7.2+ says so in `inactive` (-1 for a consumer that
    never did: then `idle`, since it last tried); before 7.2, `idle` meant just that."""
    inactive = consumer.get("inactive", -1)
    return inactive if inactive >= 0 else consumer["idle"]


def _group_info(client: redis.Redis, settings: Settings) -> dict[str, Any]:
    try:
        groups = client.xinfo_groups(settings.keys.stream)
    except redis.ResponseError:
        raise OpsError(
            f"no stream {settings.keys.stream!r} (no event has been received yet, or Redis lost it)") from None
    for group in groups:
        if as_text(group["name"]) == settings.consumer_group:
            return group
    raise OpsError(
        f"no consumer group {settings.consumer_group!r} on {settings.keys.stream!r} (no consumer has run yet)")


def _fields_of(client: redis.Redis, key: str, entry_ids: list) -> list[dict[str, str]]:
    pipe = client.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.xrange(key, entry_id, entry_id, count=1)
    found = []
    for result in pipe.execute():
        fields = result[0][1] if result else {}
        found.append({as_text(k): as_text(v) for k, v in fields.items() if as_text(k) in ("event_id", "event_type")})
    return found


def _dead_letters(client: redis.Redis, settings: Settings, entry_ids: list[str] | None) -> list[tuple[str, dict]]:
    if entry_ids is None:
        return [(as_text(i), f) for i, f in client.xrange(settings.keys.dead_letters)]
    letters, unknown = [], []
    for entry_id in dict.fromkeys(entry_ids):  # the same id twice is one entry
        try:
            found = client.xrange(settings.keys.dead_letters, entry_id, entry_id, count=1)
        except redis.ResponseError:
            found = []
        (letters.append((entry_id, found[0][1])) if found else unknown.append(entry_id))
    if unknown:
        raise OpsError(f"no dead letter {', '.join(unknown)} in {settings.keys.dead_letters}")
    return letters


def _dead_row(entry_id, fields: dict) -> dict[str, Any]:
    text = {as_text(k): as_text(v) for k, v in fields.items() if as_text(k) != "payload"}
    return {"entry_id": as_text(entry_id), "event_id": text.get("event_id"), "event_type": text.get("event_type"),
            "error": text.get("error"), "deliveries": int(text.get("deliveries") or 0),
            "first_failed_at": int(text.get("first_failed_at") or 0), "source_id": text.get("source_id")}
