"""Opening the database named by DATABASE_URL, and the one transaction shape every writer uses."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator

import peewee
from playhouse.db_url import connect

database_proxy = peewee.DatabaseProxy()

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "busy_timeout": 10_000,  # ms; writers from several consumers wait for each other
    "synchronous": "normal",  # with WAL: durable across process crashes, fast commits
    "foreign_keys": 1,
}

# Errors that mean "the database is unavailable", as opposed to "this event broke a rule".
OUTAGE_ERRORS = (peewee.OperationalError, peewee.InterfaceError)


def open_database(url: str) -> peewee.Database:
    """Open (lazily) the database at `url` and bind the models to it."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if sqlite3.sqlite_version_info < (3, 35):
            raise RuntimeError(
                f"SQLite {sqlite3.sqlite_version} is too old: the consumer needs 3.35 or newer "
                "(INSERT ... RETURNING); use a newer Python or PostgreSQL"
            )
        db = connect(url, pragmas=SQLITE_PRAGMAS, returning_clause=True)
    else:
        # Short connect timeout: an outage should be noticed, not waited on.
        db = connect(url, connect_timeout=5)
    database_proxy.initialize(db)
    return db  # type: ignore[no-any-return]  # playhouse's connect() is untyped


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)


@contextlib.contextmanager
def write_transaction(db: peewee.Database) -> Iterator[None]:
    """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so two
    consumers queue on busy_timeout instead of failing when a reader upgrades to a writer. On PostgreSQL
    the server ends it if it sits idle IDLE_IN_TRANSACTION_MAX_MS (see bound_transaction)."""
    if isinstance(db, peewee.SqliteDatabase):
        with db.atomic("IMMEDIATE"):
            yield
    else:
        with db.atomic():
            bound_transaction(db, None)
            yield


# A consumer frozen with a transaction open (SIGSTOP, a paused container, a network partition) keeps its
# row locks, and whoever takes its entries over would wait on them. So every consumer transaction on
# PostgreSQL carries limits that let the server end it:
# - idle_in_transaction_session_timeout: a consumer's transaction never sits idle legitimately (no Redis
#   call or other wait happens inside it; only Python between statements), so a few seconds idle means the
#   client is frozen or gone. The server then ends the session, its locks go with it, and nothing of it
#   commits. A quarter of the batch deadline, between 1 s (a loaded machine's scheduling hiccup must not
#   end a live batch) and 5 s.
# - lock_timeout, half the batch deadline: a waiter gives up, rolls back and retries later (as for any
#   outage error) instead of burning its whole deadline on somebody else's locks.
# - statement_timeout, the rest of the deadline: no statement outlives the batch.
# They are SET LOCAL, per transaction, not per session: each batch derives them from its own deadline; they
# hold on every new connection (after an outage, or after the server ended a frozen session) with no
# connect hook; they never touch the other code that shares the connection (CLI, API, migrate); and they
# stay correct behind a transaction-pooling PgBouncer, where session settings leak to other clients.
IDLE_IN_TRANSACTION_MIN_MS = 1_000
IDLE_IN_TRANSACTION_MAX_MS = 5_000


def transaction_bounds(remaining_ms: int | None) -> dict[str, int]:
    """The PostgreSQL limits (ms) for a transaction with `remaining_ms` to its deadline (None: no deadline,
    only the idle limit). Never 0, which PostgreSQL reads as no limit."""
    if remaining_ms is None:
        return {"idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_MAX_MS}
    remaining_ms = max(1, int(remaining_ms))
    return {
        "statement_timeout": remaining_ms,
        "lock_timeout": max(1, remaining_ms // 2),
        "idle_in_transaction_session_timeout": min(
            IDLE_IN_TRANSACTION_MAX_MS, max(IDLE_IN_TRANSACTION_MIN_MS, remaining_ms // 4)
        ),
    }


def bound_transaction(db: peewee.Database, deadline: float | None) -> None:
    """Set the limits above for the rest of the open transaction, from `deadline` (time.monotonic());
    in one round trip. Nothing on SQLite (one writer at a time, busy_timeout bounds the wait). A lock wait
    that times out, or a session the server ended, raises an OUTAGE_ERRORS error: roll back and retry."""
    if not is_postgres(db):
        return
    remaining_ms = None if deadline is None else int((deadline - time.monotonic()) * 1000)
    bounds = transaction_bounds(remaining_ms)
    db.execute_sql(
        "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in bounds),
        [value for name, ms in bounds.items() for value in (name, str(ms))],
    )
