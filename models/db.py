"""Opening the database named by DATABASE_URL, and the one transaction shape every writer uses."""
from __future__ import annotations

import contextlib
import os
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
        db = connect(url, pragmas=SQLITE_PRAGMAS)
    else:
        # Short connect timeout: an outage should be noticed, not waited on.
        db = connect(url, connect_timeout=5)
    database_proxy.initialize(db)
    return db


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)


@contextlib.contextmanager
def write_transaction(db: peewee.Database) -> Iterator[None]:
    """One write transaction. On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so two
    consumers queue on busy_timeout instead of failing when a reader upgrades to a writer."""
    if isinstance(db, peewee.SqliteDatabase):
        with db.atomic("IMMEDIATE"):
            yield
    else:
        with db.atomic():
            yield


def migrate(db: peewee.Database) -> list[str]:
    """Create the tables and columns that are missing; safe to run any number of times. Returns what it
    created: table names, and `table.column` for columns added to a table made by an older release."""
    from playhouse.migrate import SchemaMigrator
    from playhouse.migrate import migrate as run_migrations

    from models.tables import ALL_TABLES

    existing = set(db.get_tables())
    created = []
    with db.atomic():
        db.create_tables(ALL_TABLES, safe=True)
        migrator = SchemaMigrator.from_database(db)
        for model in ALL_TABLES:
            table = model._meta.table_name
            if table not in existing:
                created.append(table)
                continue
            columns = {column.name for column in db.get_columns(table)}
            missing = [field for field in model._meta.sorted_fields if field.column_name not in columns]
            # Every column added after a table's first release is nullable, so old rows need no default.
            run_migrations(*(migrator.add_column(table, field.column_name, field) for field in missing))
            created.extend(f"{table}.{field.column_name}" for field in missing)
    return created
