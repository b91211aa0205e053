"""Small helpers shared by the receiver tests (not fixtures: those live in each test file)."""

from __future__ import annotations

import json

import redis

from receiver.sample_events import build_event

STREAM = "stripe:events"  # STREAM_KEY's default (CONTRACT.md)
WEBHOOK = "/webhooks/stripe"


def event_bytes(event_type: str = "invoice.paid", community: str | None = "42", **kw) -> tuple[dict, bytes]:
    """A realistic event and the exact bytes we send for it."""
    event = build_event(event_type, community, **kw)
    return event, json.dumps(event, indent=2).encode()


def entries(client: redis.Redis, key: str = STREAM) -> list[dict[str, bytes]]:
    """The stream's entries, oldest first, as {field: raw bytes} with the entry id under "_id"."""
    return [{"_id": entry_id, **{k.decode(): v for k, v in fields.items()}} for entry_id, fields in client.xrange(key)]


def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)
