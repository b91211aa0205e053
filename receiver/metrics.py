"""The receiver's Prometheus metrics (names from CONTRACT.md; the /v1 API's and billing_build_info from the
README's "Watching it") and GET /metrics.

Under `python -m receiver serve` every gunicorn worker is its own process: receiver/serve.py puts
PROMETHEUS_MULTIPROC_DIR in the environment before any worker imports this module, so each worker
keeps its values in files there, and whichever worker answers /metrics sums them all. Without that
variable (the Flask test client, a bare WSGI server) the process's own registry is served."""

from __future__ import annotations

import os

from flask import Blueprint, Response
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from billing.build_info import BuildInfo
from billing.vocabulary import HANDLED_TYPES, Receipt

REQUESTS = Counter("billing_webhook_requests", "Webhook requests answered, by HTTP status", ["status"])
REQUEST_SECONDS = Histogram(
    "billing_webhook_request_duration_seconds",
    "Time to answer a webhook request (every outcome)",
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENTS = Counter(
    "billing_webhook_events", "Verified events, by type and result (queued, duplicate)", ["event_type", "result"]
)
SIGNATURE_FAILURES = Counter("billing_webhook_signature_failures", "Rejected signatures, by reason", ["reason"])
ENQUEUE_FAILURES = Counter("billing_webhook_enqueue_failures", "Events not queued because Redis failed (503)")
REPLICA_WAIT_FAILURES = Counter(
    "billing_webhook_replica_wait_failures",
    "Events stored on the primary but answered 503 because fewer than REDIS_MIN_REPLICAS replicas confirmed them "
    "within REDIS_WAIT_MS (each also counts in billing_webhook_enqueue_failures_total)",
)
CACHE_REQUESTS = Counter(
    "billing_entitlement_cache_requests", "Entitlement reads, by cache result (hit, miss)", ["result"]
)
# /v1, by route name (never the community id, so the series stay few): the API's routes, and `unmatched`
# for a /v1 path that names none of them (404, or 405 for a method they do not take).
API_ENDPOINTS = ("subscription", "entitlements")
API_UNMATCHED = "unmatched"
API_REQUESTS = Counter(
    "billing_api_requests",
    "/v1 requests answered, by route and HTTP status (every outcome: 401, 403, 400, 404 and 503 too)",
    ["endpoint", "status"],
)
API_REQUEST_SECONDS = Histogram(
    "billing_api_request_duration_seconds",
    "Time to answer a /v1 request (every outcome), by route",
    ["endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# Series that exist from the start, at 0, so that rate() and alerts see the first one happen (a series
# that first appears at 1 shows Prometheus no increase).
for _status in ("200", "400", "413", "503"):
    REQUESTS.labels(_status)
for _type in HANDLED_TYPES:
    for _result in Receipt:
        EVENTS.labels(_type, _result)
for _reason in ("missing", "malformed", "mismatch", "expired"):
    SIGNATURE_FAILURES.labels(_reason)
for _result in ("hit", "miss"):
    CACHE_REQUESTS.labels(_result)
for _endpoint in API_ENDPOINTS:
    API_REQUEST_SECONDS.labels(_endpoint)
    for _status in ("200", "400", "401", "403", "404", "503"):
        API_REQUESTS.labels(_endpoint, _status)


BUILD_INFO = CollectorRegistry()
BUILD_INFO.register(BuildInfo())

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry) + generate_latest(BUILD_INFO), content_type=CONTENT_TYPE_PLAIN_0_0_4)
