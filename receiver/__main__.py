"""`python -m receiver serve | send`."""

from __future__ import annotations

import http.client
import sys
import urllib.error

import click

from billing.cli_support import entry_point
from billing.config import ConfigError, Settings, redact_url, scrub
from receiver.sample_events import API_VERSIONS, EVENT_TYPES


def _settings() -> Settings:
    try:
        settings = Settings.from_env()
        settings.require_webhook_secrets()
        return settings
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@entry_point("billing-receiver")
@click.group()
def cli() -> None:
    """The Stripe webhook receiver."""


@cli.command()
@click.option("--bind", default=None, help="HOST:PORT to listen on [0.0.0.0:$PORT, or gunicorn's config]")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    help="gunicorn worker processes [$WEB_CONCURRENCY, or gunicorn's config, else 2]",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="a gunicorn.conf.py [./gunicorn.conf.py if there is one]",
)
@click.option("--no-access-log", is_flag=True, help="log no line per request")
def serve(bind: str | None, workers: int | None, config_file: str | None, no_access_log: bool) -> None:
    """Run the receiver under gunicorn (GUNICORN_CMD_ARGS and a gunicorn.conf.py are honoured too)."""
    from receiver.serve import serve as run_server

    run_server(_settings(), bind, workers, config_file, access_log=not no_access_log)


@cli.command()
@click.argument("event_type", type=click.Choice(EVENT_TYPES))
@click.option(
    "--community", default=None, help="metadata community_id (omit to send one without, like `stripe trigger`)"
)
@click.option("--tier", default="premium", show_default=True, help="metadata tier")
@click.option("--api-version", default="current", show_default=True, type=click.Choice(API_VERSIONS))
@click.option("--url", default=None, help="webhook URL [http://localhost:$PORT/webhooks/stripe]")
def send(event_type: str, community: str | None, tier: str, api_version: str, url: str | None) -> None:
    """Build a realistic Stripe event, sign it with the first secret and POST it."""
    from receiver.send import send as send_event

    settings = _settings()  # .env already filled the gaps the environment left (entry_point)
    url = url or f"http://localhost:{settings.port}/webhooks/stripe"
    try:
        event, status, body = send_event(url, settings.webhook_secrets[0], event_type, community, tier, api_version)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(scrub(f"could not reach {redact_url(url)}: {reason}", url)) from None
    click.echo(f"sent {event['type']} {event['id']} (api_version {event['api_version']}) to {redact_url(url)}")
    click.echo(f"{status} {body.strip()}")
    if not 200 <= status < 300:
        sys.exit(1)


if __name__ == "__main__":
    cli()
