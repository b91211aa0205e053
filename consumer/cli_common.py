"""What every ops command shares: its settings and Redis client, expected failures as one line and a non-zero
exit, `--json`, and aligned tables."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click
import peewee
import redis

from billing.config import ConfigError, Settings, redact_url, scrub
from billing.redis_io import connect_redis
from consumer.ops import OpsError
from consumer.stripe_api import StripeApiError
from models.db import OUTAGE_ERRORS, open_database


def operation(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command its settings and Redis client, and turn every expected failure into one line."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        urls: tuple[str, ...] = ()  # whose passwords no message may show (redis-py's, psycopg2's)
        try:
            settings = Settings.from_env()
            urls = (settings.redis_url, settings.database_url)
            open_database(settings.database_url)
            return func(settings, connect_redis(settings.redis_url, timeout=5), *args, **kwargs)
        except (ConfigError, OpsError, StripeApiError) as exc:
            raise click.ClickException(scrub(str(exc), *urls)) from None
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # refused, or no answer within 5 s
            raise click.ClickException(
                scrub(f"Redis unreachable at {redact_url(settings.redis_url)}: {exc}", *urls)
            ) from None
        except redis.RedisError as exc:
            raise click.ClickException(scrub(f"Redis refused: {exc}", *urls)) from None
        except OUTAGE_ERRORS as exc:
            raise click.ClickException(
                f"database unreachable (audit row not written): {_first_line(exc, urls)}"
            ) from None
        except peewee.DatabaseError as exc:  # e.g. PostgreSQL's "relation does not exist" before a migration
            raise click.ClickException(f"database error (audit row not written): {_first_line(exc, urls)}") from None

    return wrapper


def _first_line(exc: BaseException, urls: tuple[str, ...] = ()) -> str:
    """psycopg2's messages go on for lines (a hint, the statement with a caret): the first says what is
    wrong. Without the password of any of `urls`, should a driver ever quote its connection string."""
    return scrub((str(exc).strip().splitlines() or [type(exc).__name__])[0], *urls)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")(func)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[Any, ...]], empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    cells = [[str((col[2] if len(col) > 2 else str)(row[col[1]])) for col in columns] for row in rows]
    widths = [max(len(col[0]), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    click.echo("  ".join(col[0].ljust(w) for col, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
