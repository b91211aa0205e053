"""Fixtures of the receiver tests: its app on the test's Redis and database (both databases)."""
from __future__ import annotations

import dataclasses

import pytest

from models.db import database_proxy


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
