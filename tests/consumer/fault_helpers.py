"""Events, queueing and consumer processes for the fault and crash tests."""

from __future__ import annotations

import json

from billing.config import Settings
from billing.event_queue import EventQueue
from harness import Process
from models.tables import AuditLog, WebhookEvent
from receiver.sample_events import build_event

STREAM, GROUP, DEAD = "stripe:events", "billing", "stripe:events:dead"
KEYS = Settings().keys  # the same names, as the code spells them


def events_for(n: int, prefix: str = "c") -> list[dict]:
    """n events over n/2 communities: a checkout then an invoice each."""
    out = []
    for i in range(0, n, 2):
        ids = dict(customer_id=f"cus_{prefix}{i}", subscription_id=f"sub_{prefix}{i}", created=1_700_000_000 + i)
        out.append(build_event("checkout.session.completed", f"{prefix}{i}", tier="basic", **ids))
        out.append(build_event("invoice.paid", f"{prefix}{i}", **{**ids, "created": ids["created"] + 1}))
    return out[:n]


def enqueue_all(client, events: list[dict]) -> None:
    queue = EventQueue(client, KEYS, 3600)
    for event in events:
        assert queue.enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())


def consumer(env, tmp_path, name, **extra) -> Process:
    return Process(
        ["consumer", "run", "--name", name, "--block-ms", "100", "--batch", "20"], {**env, **extra}, str(tmp_path)
    )


def applied_once(events: list[dict]) -> tuple[int, int]:
    """(lost, doubled): events with no row or no audit, and events with more than one audit row."""
    audits: dict[str, int] = {}
    for row in AuditLog.select(AuditLog.event_data):
        event_id = json.loads(row.event_data).get("stripe_event_id")
        audits[event_id] = audits.get(event_id, 0) + 1
    rows = {r.stripe_event_id: r.status for r in WebhookEvent.select()}
    lost = sum(1 for e in events if rows.get(e["id"]) != "processed" or not audits.get(e["id"]))
    doubled = sum(1 for e in events if audits.get(e["id"], 0) > 1)
    return lost, doubled


def pending(client) -> int:
    return client.xpending(STREAM, GROUP)["pending"]
