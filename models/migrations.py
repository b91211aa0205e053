"""Versioned schema migrations: `python -m models migrate` applies, in order, the steps of STEPS a database has
not had yet, and records each in `schema_version`; `python -m models status` shows where a database stands.
README.md ("Schema migrations") says how to add a step.

`schema_version` has one row per applied step (version, name, applied_at); a database's version is the highest,
0 when it has none (never migrated, or made before migrations were versioned: step 1 takes it from there).

Each step runs in a transaction of its own, with its row: a step that fails leaves nothing of itself, and the
next run starts it again. Two runs at once (two deploys, a release's processes starting together) queue for one
lock, taken before the version is read: on PostgreSQL a transaction-scoped advisory lock keyed by the schema
being migrated, on SQLite the write lock (BEGIN IMMEDIATE, waited for up to busy_timeout). The second run then
reads the version the first recorded, and applies nothing twice.

A database at a version newer than the code knows is refused before anything is written: a release must not
write to a schema made by a later one (a column it does not know may be NOT NULL, or mean something)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations

from billing.clock import utcnow
from models import tables_v1
from models.db import is_postgres

# The advisory lock's first key ("migr" in ASCII); the second is a hash of the schema's name, so the schemas of
# one PostgreSQL database migrate independently.
LOCK_CLASS = 0x6D696772


@dataclasses.dataclass(frozen=True)
class Step:
    """One change of the schema. `apply(db)` makes it on `db`, inside the transaction the runner opened, and
    returns what it created, for the output (or nothing)."""

    version: int
    name: str
    apply: Callable[[peewee.Database], Iterable[str] | None]


@dataclasses.dataclass(frozen=True)
class AppliedStep:
    step: Step
    created: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class MigrationReport:
    version: int  # the database's, after the run
    applied: tuple[AppliedStep, ...]  # by this run, in order; none when the database was up to date

    @property
    def created(self) -> list[str]:
        return [name for applied in self.applied for name in applied.created]


@dataclasses.dataclass(frozen=True)
class SchemaStatus:
    version: int  # the database's
    latest: int  # the newest this code knows
    pending: tuple[Step, ...]


class SchemaTooNewError(Exception):
    """The database has had steps this code does not know."""

    def __init__(self, version: int, latest: int):
        super().__init__(
            f"the database schema is at version {version}, newer than this release knows "
            f"(version {latest}): run a release that knows it"
        )
        self.version = version
        self.latest = latest


class SchemaVersion(peewee.Model):
    version = peewee.IntegerField(primary_key=True)
    name = peewee.CharField(max_length=255)
    applied_at = peewee.DateTimeField()

    class Meta:
        table_name = "schema_version"  # no database: every query here names the one it runs on


# The steps, oldest first. A released step is never edited (databases have it recorded as applied); a change is
# a new step. A step works on the `db` it is given, never through models/tables.py, which describes the latest
# schema, not the one the step starts from.


def baseline(db: peewee.Database) -> list[str]:
    """Version 1, the schema when migrations became versioned (tables_v1), from ANY database the unversioned
    `migrate` accepted: empty; at that schema with no `schema_version`; or made by an older release, missing
    tables or the nullable columns added since. Returns what it created: table names, and `table.column` for
    columns added to a table made by an older release."""
    existing = set(db.get_tables())
    created = []
    # What `db.create_tables(tables_v1.TABLES, safe=True)` does, in its order, on `db` rather than a bound one.
    for model in peewee.sort_models(tables_v1.TABLES):
        peewee.SchemaManager(model, db).create_all(safe=True)
    migrator = SchemaMigrator.from_database(db)
    for model in tables_v1.TABLES:
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


STEPS: tuple[Step, ...] = (Step(1, "baseline", baseline),)


def migrate(db: peewee.Database, steps: Sequence[Step] = STEPS) -> MigrationReport:
    """Bring `db` to the latest version, one step per transaction: safe to run any number of times, and by
    several processes at once. Raises SchemaTooNewError, writing nothing, if `db` is newer than `steps`."""
    latest = _latest(steps)
    applied = []
    while True:
        with _exclusive(db):
            peewee.SchemaManager(SchemaVersion, db).create_table(safe=True)
            version = _version(db)
            if version > latest:
                raise SchemaTooNewError(version, latest)
            if version == latest:
                return MigrationReport(version, tuple(applied))
            step = steps[version]  # numbered from 1, so the next one
            created = tuple(step.apply(db) or ())
            SchemaVersion.insert(version=step.version, name=step.name, applied_at=utcnow()).execute(db)
            applied.append(AppliedStep(step, created))


def status(db: peewee.Database, steps: Sequence[Step] = STEPS) -> SchemaStatus:
    """The database's version and the steps left to apply; reads only."""
    latest = _latest(steps)
    version = _version(db) if db.table_exists(SchemaVersion._meta.table_name) else 0
    return SchemaStatus(version, latest, tuple(steps[version:]))


def _latest(steps: Sequence[Step]) -> int:
    numbers = [step.version for step in steps]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"migration steps must be numbered 1, 2, 3, ... in order, not {numbers}")
    return len(numbers)


def _version(db: peewee.Database) -> int:
    return SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar(db) or 0


@contextlib.contextmanager
def _exclusive(db: peewee.Database) -> Iterator[None]:
    """A transaction that no other migration runs alongside."""
    if is_postgres(db):
        with db.atomic():
            db.execute_sql("SELECT pg_advisory_xact_lock(%s, hashtext(coalesce(current_schema(), '')))", (LOCK_CLASS,))
            yield
    else:
        with db.atomic("IMMEDIATE"):
            yield
