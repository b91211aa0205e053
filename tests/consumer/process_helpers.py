"""Helpers of the tests that run consumers as real processes: queue an event as the receiver would, a
subscription's life in events, and a consumer process."""

from __future__ import annotations

import json

from billing.event_queue import EventQueue
from harness import Process
from receiver.sample_events import build_event


def enqueue(queue: EventQueue, event: dict) -> str:
    return queue.enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())


def lifecycle(community: str, start: int, api_version: str = "current") -> list[dict]:
    """A subscription's life in five events, one second apart: created, paid, failed, updated, paid."""
    ids = dict(customer_id=f"cus_{community}", subscription_id=f"sub_{community}", api_version=api_version)
    return [
        build_event("checkout.session.completed", community, tier="basic", created=start, **ids),
        build_event("invoice.paid", community, tier="basic", created=start + 1, **ids),
        build_event("invoice.payment_failed", community, tier="basic", created=start + 2, **ids),
        build_event(
            "customer.subscription.updated", community, tier="elite", status="active", created=start + 3, **ids
        ),
        # The invoice's subscription metadata mirrors the subscription's, which the update moved to elite.
        build_event("invoice.paid", community, tier="elite", created=start + 4, **ids),
    ]


def consumer(env: dict, tmp_path, name: str = "c1", *extra: str, **env_extra: str) -> Process:
    return Process(
        ["consumer", "run", "--name", name, "--block-ms", "200", *extra], {**env, **env_extra}, str(tmp_path)
    )
