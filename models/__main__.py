"""`python -m models migrate`: create or upgrade the schema (idempotent)."""
from __future__ import annotations

import sys

import click

from billing.cli_support import entry_point
from billing.config import ConfigError, Settings, scrub
from models.db import OUTAGE_ERRORS, open_database
from models.migrations import migrate


@entry_point("billing-models")
@click.group()
def cli() -> None:
    """Database schema commands."""


@cli.command("migrate")
def migrate_command() -> None:
    """Create the tables and indexes that are missing (safe to run again)."""
    try:
        settings = Settings.from_env()
        db = open_database(settings.database_url)
        created = migrate(db)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OUTAGE_ERRORS as exc:
        # Never the password, should the driver ever quote its connection string.
        raise click.ClickException(scrub(f"database unreachable: {str(exc).strip()}", settings.database_url)) from None
    click.echo(f"created: {', '.join(created)}" if created else "schema up to date")


if __name__ == "__main__":
    sys.exit(cli())
