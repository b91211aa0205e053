"""Versioned migrations (`python -m models migrate`): any database an earlier release made is brought to the latest
version, its rows kept and the steps recorded; a step added later upgrades an existing database in place; a second
run, or two at once, apply nothing twice; a database newer than the code is refused."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import peewee
import pytest
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations

from harness import REPO, wait_for
from models import tables_v1
from models.db import database_proxy, is_postgres, open_database
from models.migrations import STEPS, SchemaTooNewError, SchemaVersion, Step, migrate, status
from models.tables import ALL_TABLES, Subscription, WebhookEvent

LATEST = STEPS[-1].version

# The schema as an older release created it (before deferred events and the columns below).
OLD_SCHEMA = [
    "CREATE TABLE subscriptions (id SERIAL PRIMARY KEY, community_id VARCHAR(128) NOT NULL UNIQUE, "
    "stripe_customer_id VARCHAR(255), stripe_subscription_id VARCHAR(255), tier VARCHAR(64) NOT NULL, "
    "status VARCHAR(32) NOT NULL, grace_until TIMESTAMP, current_period_start TIMESTAMP, "
    "current_period_end TIMESTAMP, last_event_created BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, "
    "updated_at TIMESTAMP NOT NULL)",
    "CREATE TABLE webhook_events (id SERIAL PRIMARY KEY, stripe_event_id VARCHAR(255) NOT NULL UNIQUE, "
    "event_type VARCHAR(255) NOT NULL, status VARCHAR(16) NOT NULL, error_message TEXT, "
    "received_at TIMESTAMP NOT NULL, processed_at TIMESTAMP)",
    "INSERT INTO subscriptions (community_id, tier, status, last_event_created, created_at, updated_at) "
    "VALUES ('42', 'premium', 'active', 5, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    "INSERT INTO webhook_events (stripe_event_id, event_type, status, received_at) "
    "VALUES ('evt_old', 'invoice.paid', 'processed', '2026-01-01 00:00:00')",
]


def add_subscription_note(db: peewee.Database) -> list[str]:
    """A next step as a maintainer would write it: a nullable column, an index, and a data fix."""
    migrator = SchemaMigrator.from_database(db)
    run_migrations(
        migrator.add_column("subscriptions", "note", peewee.CharField(max_length=64, null=True)),
        migrator.add_index("subscriptions", ("tier", "note")),
    )
    db.execute_sql("UPDATE subscriptions SET note = tier || ' plan'")
    return ["subscriptions.note", "subscriptions_tier_note"]


NOTE = Step(LATEST + 1, "subscription_note", add_subscription_note)


@pytest.fixture
def database(database_url):
    """An empty database, not migrated: each test brings it where it needs."""
    db = open_database(database_url)
    yield db
    db.close()
    database_proxy.initialize(None)


def models_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "models", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def recorded(db: peewee.Database) -> list[tuple[int, str]]:
    return [(row.version, row.name) for row in SchemaVersion.select().order_by(SchemaVersion.version).execute(db)]


def columns(db: peewee.Database, table: str) -> set[str]:
    return {column.name for column in db.get_columns(table)}


def rows(db: peewee.Database, table: str, names: list[str]) -> list[tuple]:
    return db.execute_sql(f"SELECT {', '.join(names)} FROM {table} ORDER BY id").fetchall()


def describe(db: peewee.Database) -> dict[str, tuple[set, set]]:
    """Each table's columns (name, type, nullable, primary key) and indexes (columns, unique)."""
    return {
        table: (
            {(c.name, c.data_type.lower(), c.null, c.primary_key) for c in db.get_columns(table)},
            {(tuple(i.columns), i.unique) for i in db.get_indexes(table)},
        )
        for table in db.get_tables()
        if table != SchemaVersion._meta.table_name
    }


def test_migrate_upgrades_an_old_schema_in_place(database_url, database):
    for statement in OLD_SCHEMA:
        database.execute_sql(statement.replace("SERIAL", "INTEGER") if database_url.startswith("sqlite") else statement)
    database.close()

    result = models_cli(database_url, "migrate")
    assert result.returncode == 0, result.stderr
    assert "deferred_events" in result.stdout and "subscriptions.last_paid_invoice_id" in result.stdout
    assert "webhook_events.community_id" in result.stdout
    assert "applied step 1: baseline" in result.stdout and f"schema now at version {LATEST}" in result.stdout

    sub = Subscription.get(Subscription.community_id == "42")
    assert (sub.tier, sub.status, sub.last_paid_invoice_id) == ("premium", "active", None)
    assert WebhookEvent.get(WebhookEvent.stripe_event_id == "evt_old").community_id is None
    assert recorded(database) == [(step.version, step.name) for step in STEPS]
    assert migrate(database).applied == ()  # idempotent

    result = models_cli(database_url, "migrate")
    assert (result.returncode, result.stdout) == (0, f"schema up to date at version {LATEST}\n"), result.stderr


def test_a_database_of_the_release_before_versions_is_taken_over_with_its_rows(database):
    # That release created its tables with `create_tables` of its models: models/tables_v1.py keeps them as they
    # were (tables.py moves on with later steps). It had no schema_version table.
    with database.bind_ctx(tables_v1.TABLES):
        database.create_tables(tables_v1.TABLES)
        tables_v1.Subscription.create(
            community_id="42", tier="premium", status="active", last_event_created=7, last_paid_invoice_id="in_1"
        )
        tables_v1.WebhookEvent.create(
            stripe_event_id="evt_1", event_type="invoice.paid", status="processed", community_id="42"
        )
        tables_v1.AuditLog.create(event_type="payment_succeeded", community_id="42", event_data="{}")
        tables_v1.DeferredEvent.create(
            stripe_event_id="evt_2", stripe_subscription_id="sub_1", event_type="invoice.paid", created=9, payload="{}"
        )
    before = {
        model._meta.table_name: rows(database, model._meta.table_name, list(model._meta.columns))
        for model in tables_v1.TABLES
    }
    assert status(database).version == 0

    report = migrate(database)

    assert [applied.step for applied in report.applied] == list(STEPS) and report.version == LATEST
    assert report.applied[0].created == ()  # the tables were all there
    assert recorded(database) == [(step.version, step.name) for step in STEPS]
    assert status(database).pending == ()
    for model in tables_v1.TABLES:
        table = model._meta.table_name
        assert rows(database, table, list(model._meta.columns)) == before[table] != []


def test_the_steps_make_the_schema_the_models_describe(database):
    migrate(database)
    migrated = describe(database)
    assert set(migrated) == {model._meta.table_name for model in ALL_TABLES}

    database.drop_tables(ALL_TABLES)
    database.create_tables(ALL_TABLES)
    assert describe(database) == migrated


def test_a_second_run_changes_nothing(database):
    first = migrate(database)
    assert [applied.step.version for applied in first.applied] == [step.version for step in STEPS]
    assert first.created == ["subscriptions", "webhook_events", "billing_audit_log", "deferred_events"]
    schema = describe(database)

    again = migrate(database)
    assert (again.version, again.applied) == (LATEST, ())
    assert describe(database) == schema
    assert recorded(database) == [(step.version, step.name) for step in STEPS]


def test_a_new_step_upgrades_an_existing_database_and_keeps_its_rows(database):
    migrate(database)
    Subscription.create(community_id="42", tier="premium", status="active")
    Subscription.create(community_id="43", tier="basic", status="past_due")

    report = migrate(database, STEPS + (NOTE,))

    assert report.version == NOTE.version
    assert [(a.step, a.created) for a in report.applied] == [(NOTE, ("subscriptions.note", "subscriptions_tier_note"))]
    assert rows(database, "subscriptions", ["community_id", "tier", "status", "note"]) == [
        ("42", "premium", "active", "premium plan"),
        ("43", "basic", "past_due", "basic plan"),
    ]
    assert (("tier", "note"), False) in {(tuple(i.columns), i.unique) for i in database.get_indexes("subscriptions")}
    assert recorded(database)[-1] == (NOTE.version, NOTE.name)
    assert migrate(database, STEPS + (NOTE,)).applied == ()
    assert status(database, STEPS + (NOTE,)).pending == ()


def test_a_step_that_fails_leaves_nothing_of_itself_and_runs_again_next_time(database):
    migrate(database)

    def half_done(db):
        add_subscription_note(db)
        raise RuntimeError("the data fix found a row it cannot fix")

    with pytest.raises(RuntimeError, match="cannot fix"):
        migrate(database, STEPS + (Step(NOTE.version, NOTE.name, half_done),))
    assert "note" not in columns(database, "subscriptions")
    assert status(database, STEPS + (NOTE,)).version == LATEST

    assert migrate(database, STEPS + (NOTE,)).version == NOTE.version
    assert "note" in columns(database, "subscriptions")


def test_a_database_newer_than_the_code_is_refused(database_url, database):
    migrate(database, STEPS + (NOTE,))
    schema = describe(database)

    with pytest.raises(SchemaTooNewError) as refused:
        migrate(database)
    assert (refused.value.version, refused.value.latest) == (NOTE.version, LATEST)
    assert status(database).version == NOTE.version and status(database).pending == ()

    result = models_cli(database_url, "migrate")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"Error: the database schema is at version {NOTE.version}, newer than this "
        f"release knows (version {LATEST}): run a release that knows it"
    ]
    assert describe(database) == schema and recorded(database)[-1] == (NOTE.version, NOTE.name)

    result = models_cli(database_url, "status")
    assert (result.returncode, result.stdout) == (
        0,
        f"schema at version {NOTE.version}, latest {LATEST}: newer than this release\n",
    ), result.stderr


def test_status_shows_the_version_and_what_is_left(database_url, database):
    result = models_cli(database_url, "status")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        f"schema at version 0, latest {LATEST}: to apply with `python -m models migrate`: "
        + ", ".join(f"{step.version} ({step.name})" for step in STEPS)
        + "\n"
    )
    assert database.get_tables() == []  # status writes nothing

    migrate(database)
    result = models_cli(database_url, "status")
    assert (result.returncode, result.stdout) == (0, f"schema at version {LATEST}, latest {LATEST}: up to date\n")


def test_two_migrations_at_once_apply_each_step_once(database):
    """Two threads, each on a connection of its own, start together. The first to take the lock holds it in its
    first step until the other is seen waiting for it (PostgreSQL shows waiters in pg_locks; SQLite's busy wait
    cannot be seen, there the other has at least started)."""
    started = threading.Barrier(2)
    backends: dict[int, int] = {}
    calls: Counter[int] = Counter()

    def until_the_other_waits(db):
        if is_postgres(db):
            other = next(pid for thread, pid in backends.items() if thread != threading.get_ident())
            wait_for(
                lambda: db.execute_sql(
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND NOT granted", (other,)
                ).fetchone()[0],
                timeout=10,
                what="the other migration to wait for the lock",
            )

    def counted(step: Step, before=lambda db: None) -> Step:
        def apply(db):
            calls[step.version] += 1
            before(db)
            return step.apply(db)

        return Step(step.version, step.name, apply)

    steps = (counted(STEPS[0], until_the_other_waits), *map(counted, STEPS[1:]), counted(NOTE))

    def run():
        try:
            if is_postgres(database):
                backends[threading.get_ident()] = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            started.wait(timeout=10)
            return migrate(database, steps)
        finally:
            database.close()  # this thread's connection

    with ThreadPoolExecutor(2) as pool:
        reports = [future.result(timeout=60) for future in [pool.submit(run), pool.submit(run)]]

    assert calls == {step.version: 1 for step in steps}
    assert [report.version for report in reports] == [NOTE.version, NOTE.version]
    assert sorted(a.step.version for report in reports for a in report.applied) == [step.version for step in steps]
    assert recorded(database) == [(step.version, step.name) for step in steps]
