"""`python -m models migrate`: create or upgrade the schema (idempotent); `python -m models status`: its version."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click
import peewee

from billing.cli_support import entry_point
from billing.config import ConfigError, Settings, scrub
from models.db import OUTAGE_ERRORS, open_database
from models.migrations import SchemaTooNewError, migrate, status

T = TypeVar("T")


@entry_point("billing-models")
@click.group()
def cli() -> None:
    """Database schema commands."""


@cli.command("migrate")
def migrate_command() -> None:
    """Bring the schema to the latest version.

    Applies, in order, the steps the database has not had; safe to run again, and by several processes at once."""
    report = _on_database(migrate)
    if report.created:
        click.echo(f"created: {', '.join(report.created)}")
    for applied in report.applied:
        click.echo(f"applied step {applied.step.version}: {applied.step.name}")
    click.echo(
        f"schema now at version {report.version}"
        if report.applied
        else f"schema up to date at version {report.version}"
    )


@cli.command("status")
def status_command() -> None:
    """Show the schema version and the latest.

    The database's schema version, the latest this release knows and the steps left to apply; changes nothing."""
    state = _on_database(status)
    if state.version > state.latest:
        verdict = "newer than this release"
    elif state.pending:
        steps = ", ".join(f"{step.version} ({step.name})" for step in state.pending)
        verdict = f"to apply with `python -m models migrate`: {steps}"
    else:
        verdict = "up to date"
    click.echo(f"schema at version {state.version}, latest {state.latest}: {verdict}")


def _on_database(action: Callable[[peewee.Database], T]) -> T:
    """`action` on the database of DATABASE_URL, its errors as one line."""
    try:
        settings = Settings.from_env()
        return action(open_database(settings.database_url))
    except (ConfigError, SchemaTooNewError) as exc:
        raise click.ClickException(str(exc)) from None
    except OUTAGE_ERRORS as exc:
        # Never the password, should the driver ever quote its connection string.
        raise click.ClickException(scrub(f"database unreachable: {str(exc).strip()}", settings.database_url)) from None


if __name__ == "__main__":
    sys.exit(cli())
