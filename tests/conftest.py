from __future__ import annotations

import dataclasses

import pytest

from billing.config import Settings
from billing.event_queue import EventQueue
from harness import SECRET, RedisServer, postgres_schema, service_env
from models.db import database_proxy, open_database
from models.migrations import migrate
from receiver.sample_events import API_VERSIONS
from tests.database_helpers import DATABASES


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the suite's shared redis-server."""
    client = redis_server.client()
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_server, redis_url):
    """A client of the suite's redis-server, on its clean database."""
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture
def cli_env(redis_url, database_url, db):
    """What the ops CLI (`python -m consumer ...`) reads from the environment, for the suite's Redis and database."""
    return {"REDIS_URL": redis_url, "DATABASE_URL": database_url}


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, with append-only persistence, to stop, kill and restart."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.close()


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/billing.db"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def db(database_url):
    database = open_database(database_url)
    migrate(database)
    yield database
    database.close()
    database_proxy.initialize(None)


@pytest.fixture
def sqlite_url(tmp_path):
    """A migrated SQLite database of the test's own, for tests about Redis or processes rather than databases."""
    url = f"sqlite:///{tmp_path}/billing.db"
    database = open_database(url)
    migrate(database)
    yield url
    database.close()
    database_proxy.initialize(None)


@pytest.fixture
def consumer_env(redis_url, db, database_url):
    """What a consumer process runs with, on the test's Redis and database; DEBUG logs a line per event."""
    return service_env(redis_url, database_url, LOG_LEVEL="DEBUG")


@pytest.fixture
def queue(r):
    """The receiver's dedupe-and-enqueue script on the test's Redis, to queue events as the receiver would."""
    return EventQueue(r, Settings().stream_key, 3600)


@pytest.fixture
def settings(redis_url, database_url):
    return Settings(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=database_url)


@pytest.fixture(params=API_VERSIONS)
def api(request):
    """Each Stripe API shape: the legacy one (before 2025-03-31) and the current one."""
    return request.param


@pytest.fixture
def fake_stripe():
    """A local stand-in for Stripe's API (tests/stripe_server.py), for the real stripe client to list events from."""
    from tests.stripe_server import FakeStripe

    server = FakeStripe().start()
    yield server
    server.close()


@pytest.fixture
def client(make_client):
    """The receiver's app (create_app) through Flask's test client, on the suite's Redis and database."""
    return make_client()


@pytest.fixture
def make_client(settings, db):
    """A Flask test client of create_app(settings with `overrides`), sharing the test's database connection."""
    from receiver import create_app

    apps = []

    def make(**overrides):
        app = create_app(dataclasses.replace(settings, **overrides))
        database_proxy.initialize(db)  # create_app bound the models to a database object of its own
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        app.extensions["redis"].close()


@pytest.fixture
def make_app(redis_url, tmp_path):
    """create_app(settings with `overrides`) on the suite's redis-server; webhooks need no database, so a
    throwaway SQLite."""
    from receiver import create_app

    apps = []

    def make(**overrides):
        fields = dict(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=f"sqlite:///{tmp_path}/x.db")
        app = create_app(Settings(**{**fields, **overrides}))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["redis"].close()
    database_proxy.initialize(None)


@pytest.fixture
def webhook_client(make_app):
    """The receiver's app (make_app) through Flask's test client, for what needs no database: webhooks."""
    return make_app().test_client()
