"""The worker's parts, in-process: its backoff, its clocks, and the stream it is given."""
from __future__ import annotations

import dataclasses

import pytest

from billing.config import ConfigError
from billing.redis_io import connect_redis
from consumer.stream import EventStream
from consumer.worker import Backoff, Timing, Worker


def test_backoff_doubles_up_to_its_cap_and_a_success_resets_it():
    backoff = Backoff(first=0.1, cap=1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1


def test_the_deadline_defaults_to_half_the_claim_idle_time(settings):
    timing = Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=30_000))
    assert (timing.claim_idle_ms, timing.deadline_ms, timing.tick_ms) == (30_000, 15_000, 5_000)


@pytest.mark.parametrize("deadline_ms", [0, -5, 30_000, 40_000])
def test_a_deadline_not_below_the_claim_idle_time_is_refused(settings, deadline_ms):
    """A batch slower than CLAIM_IDLE_MS could be reclaimed by another consumer and applied twice."""
    with pytest.raises(ConfigError, match="must be shorter than CLAIM_IDLE_MS"):
        Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=30_000), deadline_ms)


@pytest.mark.parametrize("claim_idle_ms,tick_ms", [(100, 50), (1_000, 250), (60_000, 5_000)])
def test_the_tick_is_a_quarter_of_the_claim_idle_time_within_bounds(settings, claim_idle_ms, tick_ms):
    assert Timing.for_settings(dataclasses.replace(settings, claim_idle_ms=claim_idle_ms)).tick_ms == tick_ms


def test_own_entries_are_retried_after_one_two_four_ticks_and_always_before_a_reclaim():
    timing = Timing(claim_idle_ms=10_000, deadline_ms=5_000, tick_ms=1_000)
    due_after = [min(idle for idle in range(0, 20_000, 100) if timing.retry_due(idle, deliveries))
                 for deliveries in (1, 2, 3, 4, 10)]
    assert due_after == [1_000, 2_000, 4_000, 5_000, 5_000]  # capped at half of CLAIM_IDLE_MS


def test_the_worker_reads_from_the_stream_it_is_given(settings, db, redis_url):
    client = connect_redis(redis_url)
    stream = EventStream(client, dataclasses.replace(settings, stream_key="other:events"), "w1")
    worker = Worker(settings, db, client, "w1", stream=stream)
    assert worker.stream is stream
    worker.stream.ensure_group()
    assert client.exists("other:events") and not client.exists(settings.keys.stream)
