"""Fixtures of the consumer tests: each Stripe API shape, the environment of the ops CLI and of a consumer
process, the receiver's queueing script, and a local stand-in for Stripe's API."""

from __future__ import annotations

import pytest

from billing.config import Settings
from billing.event_queue import EventQueue
from harness import service_env
from receiver.sample_events import API_VERSIONS


@pytest.fixture(params=API_VERSIONS)
def api(request):
    """Each Stripe API shape: the legacy one (before 2025-03-31) and the current one."""
    return request.param


@pytest.fixture
def cli_env(redis_url, database_url, db):
    """What the ops CLI (`python -m consumer ...`) reads from the environment, for the suite's Redis and database."""
    return {"REDIS_URL": redis_url, "DATABASE_URL": database_url}


@pytest.fixture
def consumer_env(redis_url, db, database_url):
    """What a consumer process runs with, on the test's Redis and database; DEBUG logs a line per event."""
    return service_env(redis_url, database_url, LOG_LEVEL="DEBUG")


@pytest.fixture
def queue(r):
    """The receiver's dedupe-and-enqueue script on the test's Redis, to queue events as the receiver would."""
    return EventQueue(r, Settings().keys, 3600)


@pytest.fixture
def fake_stripe():
    """A local stand-in for Stripe's API (stripe_server.py, beside this file), for the real stripe client to list
    events from."""
    from tests.consumer.stripe_server import FakeStripe

    server = FakeStripe().start()
    yield server
    server.close()
