"""The services every folder's tests use: the suite's redis-server (and one of a test's own), a database on
SQLite and PostgreSQL, the settings that join them, and the receiver's app where no database is needed (the
receiver tests and the receiver fuzzer). Each folder's conftest.py holds the fixtures only its tests use."""

from __future__ import annotations

import dataclasses

import pytest

from billing.config import Settings
from harness import SECRET, RedisServer, postgres_schema
from models.db import database_proxy, open_database
from models.migrations import migrate
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
def settings(redis_url, database_url):
    return Settings(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=database_url)


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
