"""Fixtures of the receiver tests: its app on the test's Redis and database (both databases; make_client is
in the top-level conftest, since the pipeline tests use it too)."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(make_client):
    """The receiver's app (create_app) through Flask's test client, on the suite's Redis and database."""
    return make_client()
