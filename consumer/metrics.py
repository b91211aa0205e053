"""The consumer's Prometheus metrics (names from CONTRACT.md), served on METRICS_PORT by `run`.

The worker counts what it does (events by outcome, their timings, reclaims, errors, its last good
cycle). The group-wide state (stream length, lag, pending, dead letters; summed over the partitions with
STREAM_PARTITIONS > 1, under the same names) is read from Redis when
Prometheus scrapes, by StreamCollector, so every consumer exports the same values (dashboards take
max()) and they are never staler than the scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import redis
from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from billing.build_info import BuildInfo
from billing.vocabulary import HANDLED_TYPES, Outcome
from consumer.entries import GroupState

if TYPE_CHECKING:
    from consumer.batch import EntryOutcome

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

EVENTS = Counter(
    "billing_events",
    "Events applied, by type and outcome (processed, ignored, stale, deferred, duplicate, failed, dead)",
    ["event_type", "outcome"],
)
PROCESSING_SECONDS = Histogram(
    "billing_event_processing_seconds",
    "Time to apply one event inside its batch's transaction (its savepoint; the shared commit not included)",
    buckets=BUCKETS,
)
END_TO_END_SECONDS = Histogram(
    "billing_event_end_to_end_seconds",
    "From the event's entry into the stream (its id's time) to the commit",
    buckets=BUCKETS,
)
RECLAIMED = Counter("billing_reclaimed", "Entries taken over from consumers that left them idle (XAUTOCLAIM)")
LAST_SUCCESS = Gauge(
    "billing_consumer_last_success_timestamp_seconds",
    "When the loop last completed a cycle: a batch applied and settled, or a read that found nothing new",
)
# Each failed try counts, so both climb for as long as an outage lasts.
DB_ERRORS = Counter(
    "billing_db_errors",
    "Database errors met: batches not applied, grace sweeps skipped, "
    "failed probes while waiting for the database to come back",
)
REDIS_FAILURES = Counter(
    "billing_redis_errors",
    "Redis errors met by the worker, each retried: Redis unreachable, "
    "error replies (OOM, READONLY, UNBLOCKED, LOADING, MASTERDOWN, NOGROUP, ...) to reads, "
    "claims, settlements, trims, sweeps, group creation and probes, and settlements Redis "
    "refused for memory (then acknowledged without their dedupe marks)",
)
DEADLINES_MISSED = Counter(
    "billing_batch_deadline_exceeded", "Batches rolled back because they ran past their deadline"
)
RECONCILED = Counter(
    "billing_reconciled_events",
    "Events of failed webhooks that reconciliation found in Stripe's Events API: queued (we did not have them), "
    "already_had; and error, reconciliation passes that failed (Stripe, network, Redis or database)",
    ["result"],
)

# The handled types' series exist from the start, at 0, so that rate() sees their first event.
for _type in HANDLED_TYPES:
    for _outcome in Outcome:
        EVENTS.labels(_type, _outcome)
for _result in ("queued", "already_had", "error"):
    RECONCILED.labels(_result)


def record_outcomes(outcomes: list[EntryOutcome], committed_at: float) -> None:
    """One committed batch: each event's outcome, the time it took to apply and its time end to end."""
    for outcome in outcomes:
        EVENTS.labels(outcome.entry.event_type, outcome.outcome).inc()
        PROCESSING_SECONDS.observe(outcome.seconds)
        END_TO_END_SECONDS.observe(max(0.0, committed_at - outcome.entry.enqueued_at))


class StreamCollector(Collector):
    """Gauges of the whole group, read with one Redis round trip per scrape. If Redis does not answer
    the scrape still succeeds, with billing_redis_up 0 and none of these gauges."""

    def __init__(self, read_state: Callable[[], GroupState]):
        self.read_state = read_state

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()  # names only: registering must not wait on Redis

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            state = self.read_state()
        except redis.RedisError:
            return [GaugeMetricFamily("billing_redis_up", "Whether Redis answered this scrape", value=0)]
        families = self._families()
        families[0].add_metric([], 1)
        families[1].add_metric([], state.stream_length)
        if state.group_lag is not None:  # Redis cannot always count it (after XDEL, say); no sample then
            families[2].add_metric([], state.group_lag)
        families[3].add_metric([], state.pending)
        oldest_ms = state.oldest_pending_ms
        families[4].add_metric([], max(0.0, time.time() - oldest_ms / 1000) if oldest_ms is not None else 0.0)
        families[5].add_metric([], state.dead_letters)
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("billing_redis_up", "Whether Redis answered this scrape"),
            GaugeMetricFamily("billing_stream_length", "Entries in the stream (XLEN)"),
            GaugeMetricFamily("billing_group_lag", "Entries not yet delivered to the group"),
            GaugeMetricFamily("billing_pending_entries", "Entries delivered but not acknowledged"),
            GaugeMetricFamily(
                "billing_oldest_pending_age_seconds",
                "Age of the oldest pending entry, from its id's time (0 when none)",
            ),
            GaugeMetricFamily("billing_dead_letters", "Entries in the dead-letter stream"),
        ]


class MetricsServerError(Exception):
    """/metrics cannot be served on METRICS_PORT (in use, say); the message is the one line to show."""


def serve_metrics(port: int, read_state: Callable[[], GroupState]) -> None:
    """Serve /metrics on `port` (all interfaces) from a daemon thread."""
    disable_created_metrics()  # no *_created series: nothing here uses them, and they double the count
    REGISTRY.register(StreamCollector(read_state))
    REGISTRY.register(BuildInfo())
    try:
        start_http_server(port)
    except OSError as exc:
        raise MetricsServerError(f"METRICS_PORT={port}: cannot serve /metrics: {exc.strerror or exc}") from None
