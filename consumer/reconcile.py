"""Reconciliation: the consumers heal by themselves what Stripe could not deliver. Every
RECONCILE_INTERVAL_SECONDS one consumer (a Redis lock, as for the grace sweep) lists the events of our types
whose webhooks failed (`delivery_success=false`, which also lists those Stripe is still retrying) over the last
three days, Stripe's retry horizon (but not the last minute's, whose first delivery may still be on its way), and
queues, oldest first, those we do not have.

It runs in a thread of its own that only lists and queues, so a slow or failing Stripe never holds up event
processing; every request has a short timeout, and any error (Stripe, network, Redis, database) is logged and
counted in billing_reconciled_events_total{result="error"}, never raised: the next interval tries again."""

from __future__ import annotations

import logging
import threading
import time

import redis

from billing.config import Settings, scrub
from billing.keys import Keys
from billing.redis_io import connect_redis
from billing.stripe_events import event_created
from billing.vocabulary import HANDLED_TYPES
from consumer import metrics
from consumer.backfill import Enqueuer, Found
from consumer.interval_lock import IntervalLock
from consumer.stripe_api import StripeApi, StripeApiError
from models.db import OUTAGE_ERRORS, database_proxy

log = logging.getLogger(__name__)
WINDOW_SECONDS = 3 * 86_400  # Stripe retries a webhook for three days; older failures are backfill's
# Stripe lists an event whose first delivery is still on its way as not delivered yet: younger events are left to
# that delivery, or a healthy endpoint would see the reconciler queue, every pass, what Stripe is about to send.
SETTLE_SECONDS = 60


class Reconciler:
    def __init__(
        self, api: StripeApi, enqueuer: Enqueuer, client: redis.Redis, keys: Keys, interval_seconds: int, owner: str
    ):
        self.api, self.enqueuer = api, enqueuer
        self.lock = IntervalLock(client, keys.reconcile_lock, interval_seconds * 1000)
        self.owner = owner

    def run_if_ours(self) -> dict[Found, int] | None:
        """Reconcile unless another consumer did within the interval (None then)."""
        if not self.lock.take(self.owner):
            return None
        return self.run()

    def run(self, now: int | None = None) -> dict[Found, int]:
        now = now or int(time.time())
        failed = list(
            self.api.list_events(
                created_gte=now - WINDOW_SECONDS,
                created_lte=now - SETTLE_SECONDS,
                types=HANDLED_TYPES,
                delivery_success=False,
            )
        )
        failed.sort(key=lambda event: (event_created(event), event["id"]))
        counts = {found: 0 for found in Found}
        queued = []
        for event, found in self.enqueuer.place(failed):
            counts[found] += 1
            metrics.RECONCILED.labels(found.value).inc()
            if found is Found.QUEUED:
                queued.append(f"{event['id']} ({event['type']})")
        if queued:
            log.warning(
                "reconciliation queued %d events whose webhooks failed: %s",
                len(queued),
                ", ".join(queued[:20]) + (" ..." if len(queued) > 20 else ""),
            )
        return counts


def reconciler_for(settings: Settings, owner: str) -> ReconcilerThread | None:
    """The consumer's reconciler, or None (logged) when STRIPE_API_KEY is not set."""
    if not settings.stripe_api_key:
        log.info("reconciliation from Stripe's Events API is off: STRIPE_API_KEY is not set")
        return None
    stopping = threading.Event()
    interval = settings.reconcile_interval_seconds
    # Short timeouts and a bounded wait for rate limits: a pass never outlives its interval by much, and a
    # stopping consumer is not kept waiting (the wait ends when `stopping` is set).
    api = StripeApi.from_settings(
        settings,
        timeout=10.0,
        connect_timeout=3.0,
        network_retries=1,
        rate_limit_wait=min(60.0, interval / 2),
        sleep=stopping.wait,
    )
    client = connect_redis(settings.redis_url, timeout=5.0)
    enqueuer = Enqueuer(
        client, settings.keys, settings.dedupe_ttl_seconds, settings.redis_min_replicas, settings.redis_wait_ms
    )
    reconciler = Reconciler(api, enqueuer, client, settings.keys, interval, owner)
    return ReconcilerThread(reconciler, interval, stopping, urls=(settings.redis_url, settings.database_url))


class ReconcilerThread:
    """Runs a Reconciler at start and then every interval, until stopped. A daemon thread: a consumer that
    exits never waits on it longer than `stop`'s timeout."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval_seconds: float,
        stopping: threading.Event | None = None,
        urls: tuple[str, ...] = (),
    ):
        self.reconciler = reconciler
        self.interval_seconds = interval_seconds
        self.stopping = stopping or threading.Event()
        self.urls = urls  # whose passwords no log line may show
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)

    def start(self) -> None:
        log.info("reconciling from Stripe's Events API every %gs", self.interval_seconds)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.run_once()
            self.stopping.wait(self.interval_seconds)

    def run_once(self) -> None:
        try:
            self.reconciler.run_if_ours()
        except (StripeApiError, redis.RedisError, *OUTAGE_ERRORS) as exc:
            metrics.RECONCILED.labels("error").inc()
            log.warning(
                "reconciliation failed, next try in %gs: %s: %s",
                self.interval_seconds,
                type(exc).__name__,
                scrub(str(exc).strip()[:300], *self.urls),
            )
        except Exception:  # a bug of ours: loud, but the consumer goes on and the next interval retries
            metrics.RECONCILED.labels("error").inc()
            log.exception("reconciliation failed, next try in %gs", self.interval_seconds)
        finally:
            if not database_proxy.is_closed():
                database_proxy.close()  # this thread's own connection: none is kept open between intervals
