"""The receiver's Prometheus metrics (names from CONTRACT.md)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("billing_webhook_requests", "Webhook requests answered, by HTTP status", ["status"])
REQUEST_SECONDS = Histogram(
    "billing_webhook_request_duration_seconds", "Time to answer a webhook request",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENTS = Counter("billing_webhook_events", "Verified events, by type and result (queued, duplicate)",
                 ["event_type", "result"])
SIGNATURE_FAILURES = Counter("billing_webhook_signature_failures", "Rejected signatures, by reason", ["reason"])
ENQUEUE_FAILURES = Counter("billing_webhook_enqueue_failures", "Events not queued because Redis failed (503)")
CACHE_REQUESTS = Counter("billing_entitlement_cache_requests", "Entitlement reads, by cache result (hit, miss)",
                         ["result"])
