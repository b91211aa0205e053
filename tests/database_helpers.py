"""The databases the suite runs on: SQLite always, PostgreSQL when it answers (TEST_PG_URL)."""

from __future__ import annotations

from harness import postgres_reachable

DATABASES = ["sqlite", "postgresql"] if postgres_reachable() else ["sqlite"]
