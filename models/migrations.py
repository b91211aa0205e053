"""Creating and upgrading the schema: `python -m models migrate`."""
from __future__ import annotations

import peewee
from playhouse.migrate import SchemaMigrator
from playhouse.migrate import migrate as run_migrations

from models.tables import ALL_TABLES


def migrate(db: peewee.Database) -> list[str]:
    """Create the tables and columns that are missing; safe to run any number of times. Returns what it
    created: table names, and `table.column` for columns added to a table made by an older release."""
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
