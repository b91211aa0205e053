"""`python -m consumer [run]`: one worker of the consumer group (more commands join as ops needs them)."""
from __future__ import annotations

import logging
import os
import socket

import click

from models.config import ConfigError, Settings


def default_name() -> str:
    """Stable across restarts under a process manager that names its processes (honcho/foreman set PS,
    Heroku sets DYNO), so a restarted worker finds its own pending entries; unique per process otherwise."""
    suffix = os.environ.get("PS") or os.environ.get("DYNO") or str(os.getpid())
    return f"{socket.gethostname()}-{suffix}"


@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Consumer-group workers and the commands that operate them."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@cli.command()
@click.option("--name", default=None, help="consumer name in the group [HOSTNAME-$PS or HOSTNAME-PID]")
@click.option("--batch", "batch_size", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="entries read (and committed) per batch")
@click.option("--block-ms", default=2000, show_default=True, type=click.IntRange(1, 60_000),
              help="how long one read waits for new entries")
@click.option("--deadline-ms", default=None, type=click.IntRange(1, None),
              help="a batch not committed by then is rolled back; must be below CLAIM_IDLE_MS [CLAIM_IDLE_MS/2]")
def run(name: str | None, batch_size: int, block_ms: int, deadline_ms: int | None) -> None:
    """Run one worker: apply queued events exactly once, until SIGTERM/SIGINT."""
    from consumer.worker import Worker
    from models.db import open_database
    from models.redis_io import connect_redis

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        db = open_database(settings.database_url)
        client = connect_redis(settings.redis_url, timeout=block_ms / 1000 + 5)
        worker = Worker(settings, db, client, name or default_name(), batch_size=batch_size, block_ms=block_ms,
                        deadline_ms=deadline_ms)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    worker.install_signal_handlers()
    worker.run()


if __name__ == "__main__":
    cli()
