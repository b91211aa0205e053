"""One worker of the consumer group: the run loop, its signals and its shutdown, top to bottom."""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import peewee
import redis

from consumer.batch import apply_batch, settlement_of
from consumer.handlers import Policy
from consumer.stream import Entry, EventStream
from models.config import Settings
from models.db import OUTAGE_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class Backoff:
    """Capped exponential backoff, reset by a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0):
        self.first, self.cap, self.delay = first, cap, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


class Worker:
    def __init__(self, settings: Settings, db: peewee.Database, client: redis.Redis, name: str,
                 batch_size: int = 100, block_ms: int = 2000):
        self.db = db
        self.stream = EventStream(client, settings.stream_key, settings.consumer_group, name,
                                  settings.dedupe_ttl_seconds)
        self.policy = Policy(settings.grace_period_seconds, settings.price_tiers)
        self.name = name
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.stopping = threading.Event()
        self.backoff = Backoff()

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame) -> None:
        log.info("%s received, finishing the batch in hand", signal.Signals(signum).name)
        self.stopping.set()

    def run(self) -> None:
        log.info("consumer %s starting", self.name)
        self._retrying(self.stream.ensure_group)
        self._finish_own_pending()
        while not self.stopping.is_set():
            entries = self._retrying(lambda: self.stream.read_new(self.batch_size, self.block_ms))
            if entries:
                self.process(entries)
        log.info("consumer %s stopped", self.name)

    def _finish_own_pending(self) -> None:
        """Entries delivered to this consumer name before a crash or restart come first."""
        cursor = "0"
        while not self.stopping.is_set():
            entries = self._retrying(lambda: self.stream.read_own_pending(cursor, self.batch_size))
            if not entries:
                return
            log.info("resuming %d pending entries", len(entries))
            self.process(entries)
            cursor = entries[-1].entry_id

    def process(self, entries: list[Entry]) -> None:
        """Apply and settle one batch. Outages pause here and retry the same batch, so nothing
        read is ever left behind; a stop request is honoured only between batches."""
        already = self._retrying(lambda: self.stream.processed_event_ids(entries), allow_stop=False)
        outcomes = self._retrying(lambda: apply_batch(self.db, entries, already, self.policy), allow_stop=False)
        self._retrying(lambda: self.stream.settle(settlement_of(outcomes)), allow_stop=False)
        for outcome in outcomes:
            log.info("%s %s %s -> %s%s", outcome.entry.entry_id, outcome.entry.event_id, outcome.entry.event_type,
                     outcome.outcome, f" ({outcome.error})" if outcome.error else "")

    def _retrying(self, step: Callable[[], T], allow_stop: bool = True) -> T | None:
        """Run `step` until it succeeds, pausing with capped backoff while Redis or the database is
        unavailable. With allow_stop, a stop request ends the wait (returning None)."""
        while True:
            try:
                result = step()
                self.backoff.reset()
                return result
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                log.warning("stream or group missing (Redis lost its data?); recreating")
                self.stream.ensure_group()
                continue
            except REDIS_ERRORS as exc:
                what = f"Redis unavailable: {exc}"
            except OUTAGE_ERRORS as exc:
                what = f"database unavailable: {str(exc).strip()}"
                self._reset_db_connection()
            delay = self.backoff.next()
            log.warning("%s; retrying in %.1fs", what, delay)
            if allow_stop and self.stopping.is_set():
                return None
            time.sleep(delay) if not allow_stop else self.stopping.wait(delay)

    def _reset_db_connection(self) -> None:
        try:
            if not self.db.is_closed():
                self.db.close()
        except Exception:  # the connection is already gone; a fresh one is opened on next use
            pass
