"""One worker of the consumer group: the run loop, its signals and its shutdown, top to bottom.

Each pass of the loop reads new entries and applies them as one batch. Every `tick` it also retries
its own failed entries (with backoff), takes over entries other consumers left idle longer than
CLAIM_IDLE_MS, and trims the stream. A batch has a deadline shorter than CLAIM_IDLE_MS and is rolled
back past it, so no other consumer can reclaim entries a live consumer is still applying; a missed deadline
halves the batch size, and batches committed comfortably within it double it again, up to --batch.
With STRIPE_API_KEY set, a thread of the worker's own reconciles from Stripe's Events API (consumer/reconcile.py):
it only lists and queues, so nothing it waits on holds up the loop.

No Redis error stops the worker: an unreachable Redis, an error reply that says "not now" (a full Redis,
a failover: OOM, READONLY, UNBLOCKED, LOADING, MASTERDOWN, MISCONF, NOREPLICAS, TRYAGAIN) and even an
unexpected one (WRONGTYPE, say) are counted in billing_redis_errors_total and retried with capped backoff;
a lost stream or group (NOGROUP) is recreated. When Redis is full the worker keeps acknowledging (see
EventStream.settle) and trims at every tick, which is what lets Redis get out of being full."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

import peewee
import redis

from billing.config import ConfigError, Settings
from billing.redis_io import TRANSIENT_REPLIES, reply_code
from billing.vocabulary import FAILED_OUTCOMES
from consumer import metrics
from consumer.batch import BatchDeadlineExceeded, EntryOutcome, apply_batch, settlement_of
from consumer.entries import Entry, split_ref
from consumer.handlers import Policy
from consumer.reconcile import ReconcilerThread
from consumer.stream import EventStream, GroupMissing
from consumer.sweep import SWEEP_EVERY_SECONDS, sweep_if_ours
from models.db import OUTAGE_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")

UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)  # no answer at all (BusyLoadingError is a reply)
TRIM_EVERY_SECONDS = 60


class Backoff:
    """Capped exponential backoff, reset by a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


@dataclasses.dataclass(frozen=True)
class Timing:
    """The consumer's clocks, all derived from CLAIM_IDLE_MS unless given."""

    claim_idle_ms: int
    deadline_ms: int
    tick_ms: int

    @classmethod
    def for_settings(cls, settings: Settings, deadline_ms: int | None = None) -> "Timing":
        deadline_ms = deadline_ms if deadline_ms is not None else settings.claim_idle_ms // 2
        if not 0 < deadline_ms < settings.claim_idle_ms:
            raise ConfigError(
                f"the batch deadline ({deadline_ms} ms) must be shorter than CLAIM_IDLE_MS "
                f"({settings.claim_idle_ms} ms), or a slow batch could be reclaimed and run twice"
            )
        return cls(settings.claim_idle_ms, deadline_ms, tick_ms=max(50, min(settings.claim_idle_ms // 4, 5000)))

    def retry_due(self, idle_ms: int, deliveries: int) -> bool:
        """An own pending entry is tried again after tick, 2 ticks, 4 ticks ... (capped below
        CLAIM_IDLE_MS, so its owner retries it before anyone else would reclaim it)."""
        wait = min(self.tick_ms * 2 ** max(0, deliveries - 1), self.claim_idle_ms // 2)
        return bool(idle_ms >= wait)


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: peewee.Database,
        client: redis.Redis,
        name: str,
        batch_size: int = 500,
        block_ms: int = 2000,
        deadline_ms: int | None = None,
        reconciler: ReconcilerThread | None = None,
        stream: EventStream | None = None,
    ):
        self.db = db
        self.reconciler = reconciler  # lists and queues from Stripe in a thread of its own (None: off)
        self.client = client
        self.stream = stream or EventStream(client, settings, name)  # a test may pass its own
        self.policy = Policy.from_settings(settings)
        self.timing = Timing.for_settings(settings, deadline_ms)
        self.max_deliveries = settings.max_deliveries
        self.retention_ms = settings.stream_retention_seconds * 1000
        self.name = name
        self.keys = settings.keys
        self.max_batch_size = self.batch_size = batch_size
        self.block_ms = block_ms
        self.stopping = threading.Event()
        self.backoff = Backoff()
        self._next_tick = 0.0
        self._next_trim = 0.0
        self._next_sweep = 0.0
        self._memory_short = False  # Redis refused the last settlement for memory
        self._trim_eagerly = False  # trim at every tick: since a refusal for memory, until a trim finds nothing

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("%s received, finishing the batch in hand", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> None:
        log.info(
            "consumer %s starting (deadline %d ms, claim idle %d ms)",
            self.name,
            self.timing.deadline_ms,
            self.timing.claim_idle_ms,
        )
        self._retrying(self.stream.ensure_group, "creating the group")
        if self.reconciler:
            self.reconciler.start()
        try:
            self._finish_own_pending()
            while not self.stopping.is_set():
                if time.monotonic() >= self._next_tick:
                    self._tick()
                wait_ms = max(1, min(self.block_ms, int((self._next_tick - time.monotonic()) * 1000)))
                entries = self._retrying(lambda: self.stream.read_new(self.batch_size, wait_ms), "reading new entries")
                if entries:
                    self.process(entries)
                elif entries is not None:  # nothing new: idle, and healthy
                    metrics.LAST_SUCCESS.set_to_current_time()
        finally:
            if self.reconciler:
                self.reconciler.stop()
        log.info("consumer %s stopped", self.name)

    def _finish_own_pending(self) -> None:
        """Entries delivered to this consumer name before a crash or restart come first."""
        cursors: dict[int, str] = {}  # by partition: the last entry id resumed
        while not self.stopping.is_set():
            entries = self._retrying(
                lambda: self.stream.read_own_pending(dict(cursors), self.batch_size), "reading our pending entries"
            )
            if not entries:
                return
            log.info("resuming %d pending entries", len(entries))
            self.process(entries)
            for entry in entries:  # in each partition's order
                partition, entry_id = split_ref(entry.entry_id)
                cursors[partition] = entry_id

    def _tick(self) -> None:
        self._next_tick = time.monotonic() + self.timing.tick_ms / 1000
        retries = self._retrying(
            lambda: self.stream.retry_own(self.timing.retry_due, self.batch_size),
            "claiming our entries due for a retry",
        )
        if retries:
            log.info("retrying %d of our own pending entries", len(retries))
            self.process(retries)
        reclaimed = self._retrying(
            lambda: self.stream.reclaim_idle(self.timing.claim_idle_ms, self.batch_size), "reclaiming idle entries"
        )
        if reclaimed:
            metrics.RECLAIMED.inc(len(reclaimed))
            log.warning("reclaimed %d entries idle over %d ms", len(reclaimed), self.timing.claim_idle_ms)
            self.process(reclaimed)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
            self._sweep()
        if time.monotonic() >= self._next_trim or self._trim_eagerly:
            self._next_trim = time.monotonic() + TRIM_EVERY_SECONDS
            trimmed = self._retrying(
                lambda: self.stream.trim(self.retention_ms, int(time.time() * 1000)), "trimming the stream"
            )
            if trimmed:
                log.info("trimmed %d acknowledged entries older than the retention window", trimmed)
            elif trimmed == 0 and not self._memory_short:
                self._trim_eagerly = False

    def _sweep(self) -> None:
        try:
            ended = sweep_if_ours(self.db, self.client, self.keys, self.name)
        except OUTAGE_ERRORS as exc:
            metrics.DB_ERRORS.inc()
            log.warning("grace sweep skipped: %s", _describe(exc))
            self._reset_db_connection()
            return
        except redis.RedisError as exc:  # e.g. its lock refused by a full Redis: the next interval sweeps
            self._redis_error(exc, "grace sweep skipped")
            return
        if ended:
            log.info("grace period ended for %d communities: %s", len(ended), ", ".join(ended[:20]))

    def process(self, entries: list[Entry]) -> None:
        """Apply and settle one batch before its deadline. If the database or Redis is unavailable,
        or the deadline passes, nothing is acknowledged: the entries stay pending here and are retried
        once the outage is over. A stop request is honoured only between batches."""
        started = time.monotonic()
        deadline = started + self.timing.deadline_ms / 1000
        try:
            prior = self.stream.prior_state(entries)
            outcomes = apply_batch(self.db, entries, prior, self.policy, self.max_deliveries, deadline)
            # Counted once committed, even if settling fails below: the redelivery is then a duplicate.
            metrics.record_outcomes(outcomes, committed_at=time.time())
            settled = self.stream.settle(settlement_of(outcomes, prior))
        except BatchDeadlineExceeded:
            metrics.DEADLINES_MISSED.inc()
            self.batch_size = max(1, self.batch_size // 2)
            log.warning(
                "batch of %d missed its %d ms deadline; rolled back, batch size now %d",
                len(entries),
                self.timing.deadline_ms,
                self.batch_size,
            )
            return
        except OUTAGE_ERRORS as exc:
            metrics.DB_ERRORS.inc()
            log.warning("batch of %d not applied, will retry: %s", len(entries), _describe(exc))
            self._reset_db_connection()
            self._await_recovery()
            return
        except redis.RedisError as exc:
            delay = self._redis_error(exc, f"batch of {len(entries)} not settled, will retry")
            if isinstance(exc, UNREACHABLE):
                self._await_recovery()
            else:
                self.stopping.wait(delay)
            return
        if not settled:  # refused for memory: acknowledged what needs none (see EventStream.settle)
            metrics.REDIS_FAILURES.inc()
            self._trim_eagerly = True
        self._memory_short = not settled
        self.backoff.reset()
        metrics.LAST_SUCCESS.set_to_current_time()
        self._grow_batch(len(entries), time.monotonic() - started)
        _log_batch(outcomes, time.monotonic() - started)

    def _grow_batch(self, size: int, seconds: float) -> None:
        """After missed deadlines made batches smaller: double the batch size when a batch twice as big, at
        this batch's pace, would still have committed within half the deadline; never above --batch."""
        if self.batch_size >= self.max_batch_size or size <= 0:
            return
        bigger = min(self.max_batch_size, self.batch_size * 2)
        if seconds / size * bigger <= self.timing.deadline_ms / 1000 / 2:
            self.batch_size = bigger
            log.info("batch of %d committed in %.0f ms; batch size back up to %d", size, seconds * 1000, bigger)

    def _await_recovery(self) -> None:
        """Pause, with capped backoff, until both Redis and the database answer (or we are stopped)."""

        def probe() -> bool:
            self.client.ping()
            self.db.execute_sql("SELECT 1")
            return True

        while not self.stopping.is_set():
            try:
                probe()
                log.info("Redis and the database answer again; resuming")
                return
            except OUTAGE_ERRORS as exc:
                metrics.DB_ERRORS.inc()
                self._reset_db_connection()
                delay = self.backoff.next()
                log.warning("%s; retrying in %.1fs", _describe(exc), delay)
                self.stopping.wait(delay)
            except redis.RedisError as exc:
                self.stopping.wait(self._redis_error(exc, "probe"))

    def _retrying(self, step: Callable[[], T], what: str) -> T | None:
        """Run a Redis step until it succeeds, pausing with capped backoff while Redis is unavailable or
        refuses, and recreating the stream and group if Redis lost them. None if stopped meanwhile."""
        while not self.stopping.is_set():
            try:
                result = step()
                self.backoff.reset()
                return result
            except GroupMissing:
                metrics.REDIS_FAILURES.inc()
                log.warning(
                    "%s: stream or group missing (Redis restarted empty, or failed over?); recreating them", what
                )
                try:
                    if self.stream.ensure_group():
                        continue  # recreated: try again at once
                    delay = self.backoff.next()  # there again (another consumer was quicker): shortly
                except redis.RedisError as again:
                    delay = self._redis_error(again, "recreating the group")
            except redis.RedisError as exc:
                delay = self._redis_error(exc, what)
            self.stopping.wait(delay)
        return None

    def _redis_error(self, exc: redis.RedisError, doing: str) -> float:
        """Count and log one Redis error; the delay to wait before trying again."""
        metrics.REDIS_FAILURES.inc()
        delay = self.backoff.next()
        code = reply_code(exc)
        detail = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        if code is None:
            log.warning("%s: Redis unavailable: %s; retrying in %.1fs", doing, detail, delay)
        elif code in TRANSIENT_REPLIES or isinstance(exc, GroupMissing):
            log.warning("%s: Redis transient error %s: %s; retrying in %.1fs", doing, code, detail, delay)
        else:
            log.error("%s: unexpected Redis error reply %s: %s; retrying in %.1fs", doing, code, detail, delay)
        return delay

    def _reset_db_connection(self) -> None:
        try:
            if not self.db.is_closed():
                self.db.close()
        except Exception:  # the connection is already gone; a fresh one is opened on next use
            pass


def _describe(exc: BaseException) -> str:
    return f"database unavailable: {type(exc).__name__}: {str(exc).strip()[:200]}"


def _log_batch(outcomes: list[EntryOutcome], seconds: float) -> None:
    """One INFO line per batch (its outcomes counted, its time); a line per event at DEBUG, and at WARNING for
    the events that failed."""
    counts = Counter(outcome.outcome for outcome in outcomes)
    log.info(
        "batch of %d in %.0f ms: %s",
        len(outcomes),
        seconds * 1000,
        ", ".join(f"{count} {name}" for name, count in sorted(counts.items())),
    )
    for outcome in outcomes:
        failed = outcome.outcome in FAILED_OUTCOMES
        level = logging.WARNING if failed else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %s -> %s%s",
                outcome.entry.entry_id,
                outcome.entry.event_id,
                outcome.entry.event_type,
                outcome.outcome,
                f" ({outcome.error})" if outcome.error else "",
                extra={
                    "entry_id": outcome.entry.entry_id,
                    "event_id": outcome.entry.event_id,
                    "event_type": outcome.entry.event_type,
                    "outcome": outcome.outcome,
                    "community_id": outcome.community_id,
                },
            )
