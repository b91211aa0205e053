"""`python -m consumer ...`: the worker and the commands ops use to see and fix stuck work.
A thin layer over consumer.ops: it parses, prints (aligned tables, or --json) and turns errors into
one clear line and a non-zero exit."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import click
import redis

from billing import logs
from billing.cli_support import DURATION, entry_point, with_duration_help
from billing.clock import from_epoch, iso
from billing.config import ConfigError, Settings
from billing.redis_io import connect_redis
from consumer import ops, stripe_commands
from consumer.cli_common import json_option, operation, print_table
from models.db import open_database


def default_name() -> str:
    """Stable across restarts under a process manager that names its processes (honcho sets
    HONCHO_PROCESS_NAME, foreman PS, Heroku DYNO), so a restarted worker finds its own pending entries; unique
    per process otherwise."""
    suffix = os.environ.get("HONCHO_PROCESS_NAME") or os.environ.get("PS") or os.environ.get("DYNO") or str(os.getpid())
    return f"{socket.gethostname()}-{suffix}"


@entry_point("billing-consumer")
@click.group(invoke_without_command=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Consumer-group workers and the commands that operate them. With no command: run a worker."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@cli.command()
@click.option("--name", default=None, help="consumer name in the group [HOSTNAME-$PS or HOSTNAME-PID]")
@click.option(
    "--batch",
    "batch_size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="entries read (and committed) per batch",
)
@click.option(
    "--block-ms",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 60_000),
    help="how long one read waits for new entries",
)
@click.option(
    "--deadline-ms",
    default=None,
    type=click.IntRange(1, None),
    help="a batch not committed by then is rolled back; must be below CLAIM_IDLE_MS [CLAIM_IDLE_MS/2]",
)
def run(name: str | None, batch_size: int, block_ms: int, deadline_ms: int | None) -> None:
    """Run one worker: apply queued events exactly once, until SIGTERM/SIGINT."""
    from consumer.metrics import MetricsServerError, serve_metrics
    from consumer.reconcile import reconciler_for
    from consumer.stream import EventStream
    from consumer.worker import Worker

    name = name or default_name()
    logs.configure(consumer=name)
    try:
        settings = Settings.from_env()
        db = open_database(settings.database_url)
        client = connect_redis(settings.redis_url, timeout=block_ms / 1000 + 5)
        worker = Worker(
            settings,
            db,
            client,
            name,
            batch_size=batch_size,
            block_ms=block_ms,
            deadline_ms=deadline_ms,
            reconciler=reconciler_for(settings, name),
            stream=EventStream(client, settings, name),
        )
        if settings.metrics_port:
            # A client of its own, quick to give up: a scrape must not wait on a Redis that hangs.
            scrape_client = connect_redis(settings.redis_url, timeout=1.0)
            serve_metrics(settings.metrics_port, EventStream(scrape_client, settings).group_state)
    except (ConfigError, MetricsServerError) as exc:
        raise click.ClickException(str(exc)) from None
    worker.install_signal_handlers()
    worker.run()


@cli.command()
@json_option
@click.option("--watch", is_flag=True, help="refresh every 2 seconds until Ctrl-C")
@operation
def stats(settings: Settings, client: redis.Redis, as_json: bool, watch: bool) -> None:
    """Stream length, group lag, consumers, pending entries, oldest pending age, dead letters."""
    while True:
        data = ops.stats(client, settings)
        if as_json:
            click.echo(json.dumps(data, indent=2))
        else:
            if watch:
                click.clear()
            _print_stats(data)
        if not watch:
            return
        try:
            time.sleep(2)
        except KeyboardInterrupt:
            return


def _print_stats(data: dict[str, Any]) -> None:
    age = data["oldest_pending_age_seconds"]
    pairs = [
        ("stream", f"{data['stream']} ({data['stream_length']} entries)"),
        ("group", data["group"]),
        ("lag (undelivered)", data["group_lag"]),
        ("pending", data["pending"]),
        ("oldest pending", f"{data['oldest_pending_id']} ({_duration(age * 1000)} old)" if age is not None else "-"),
        ("dead letters", data["dead_letters"]),
    ]
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key:<{width}}  {value}")
    click.echo()
    print_table(
        data["consumers"],
        [
            ("CONSUMER", "name"),
            ("PENDING", "pending"),
            ("IDLE", "idle_ms", _duration),
            ("INACTIVE", "inactive_ms", _duration),
        ],
        empty="no consumers",
    )
    if "partitions" in data:  # STREAM_PARTITIONS > 1: the sums above, partition by partition
        click.echo()
        print_table(
            data["partitions"],
            [
                ("PARTITION", "partition"),
                ("STREAM", "stream"),
                ("ENTRIES", "stream_length"),
                ("LAG", "group_lag"),
                ("PENDING", "pending"),
                ("OLDEST PENDING", "oldest_pending_id", lambda i: i or "-"),
                ("DEAD LETTERS", "dead_letters"),
            ],
            empty="no partitions",
        )


@cli.command()
@json_option
@click.option(
    "--min-idle", "min_idle_ms", type=DURATION, help=with_duration_help("only entries idle at least this long")
)
@click.option("--consumer", default=None, help="only this consumer's entries")
@click.option("--count", default=50, show_default=True, type=click.IntRange(1, 10_000))
@operation
def pending(
    settings: Settings, client: redis.Redis, as_json: bool, min_idle_ms: int | None, consumer: str | None, count: int
) -> None:
    """Entries delivered but not acknowledged: who holds them, for how long, how often delivered."""
    rows = ops.pending(client, settings, min_idle_ms=min_idle_ms, consumer=consumer, count=count)
    _show(rows, as_json, entry_columns(settings), empty="nothing pending")


ENTRY_COLUMNS = [
    ("ENTRY", "entry_id"),
    ("EVENT", "event_id"),
    ("TYPE", "event_type"),
    ("CONSUMER", "consumer"),
    ("IDLE", "idle_ms", lambda ms: _duration(ms)),
    ("DELIVERIES", "deliveries"),
]


def entry_columns(settings: Settings) -> list[tuple[Any, ...]]:
    """ENTRY_COLUMNS, and with STREAM_PARTITIONS > 1 a column naming each entry's partition first."""
    return ([("PARTITION", "partition")] if settings.stream_partitions > 1 else []) + ENTRY_COLUMNS


@cli.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--to", "to", required=True, help="consumer to give the entries to (a running one applies them)")
@click.option(
    "--idle", "min_idle_ms", type=DURATION, help=with_duration_help("claim every entry idle at least this long")
)
@click.option("--new-consumer", is_flag=True, help="allow a NAME the group does not know yet")
@click.option("--dry-run", is_flag=True, help="show what would move, move nothing")
@json_option
@operation
def claim(
    settings: Settings,
    client: redis.Redis,
    entry_ids: tuple[str, ...],
    to: str,
    min_idle_ms: int | None,
    new_consumer: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Give pending entries to consumer NAME: by ENTRY_ID..., or all idle at least --idle (5m, 30s, ...)."""
    if bool(entry_ids) == (min_idle_ms is not None):
        raise click.UsageError("give entry ids or --idle DURATION (one of the two)")
    rows = ops.claim(
        client,
        settings,
        to,
        entry_ids=list(entry_ids) or None,
        min_idle_ms=min_idle_ms,
        dry_run=dry_run,
        new_consumer=new_consumer,
    )
    if as_json:
        click.echo(json.dumps({"to": to, "dry_run": dry_run, "entries": rows}, indent=2))
        return
    print_table(rows, entry_columns(settings), empty="no entry matches")
    if rows:
        click.echo(f"{'would move' if dry_run else 'moved'} {len(rows)} entries to {to}")


@cli.group()
def dead() -> None:
    """Dead letters: events whose handler failed MAX_DELIVERIES times."""


DEAD_COLUMNS = [
    ("ENTRY", "entry_id"),
    ("EVENT", "event_id"),
    ("TYPE", "event_type"),
    ("DELIVERIES", "deliveries"),
    ("FIRST FAILED", "first_failed_at", lambda ms: _iso(ms)),
    ("ERROR", "error", lambda e: (e or "")[:80]),
]


@dead.command("list")
@json_option
@click.option("--count", default=100, show_default=True, type=click.IntRange(1, 100_000))
@operation
def dead_list(settings: Settings, client: redis.Redis, as_json: bool, count: int) -> None:
    """Each dead letter with its event id, type, error and deliveries."""
    _show(ops.dead_list(client, settings, count), as_json, DEAD_COLUMNS, empty="no dead letters")


@dead.command("retry")
@click.argument("entry_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="retry every dead letter")
@json_option
@operation
def dead_retry(
    settings: Settings, client: redis.Redis, entry_ids: tuple[str, ...], retry_all: bool, as_json: bool
) -> None:
    """Put dead letters back on the stream (an event already applied is recognised, not applied twice)."""
    if bool(entry_ids) == retry_all:
        raise click.UsageError("give dead-letter entry ids or --all (one of the two)")
    rows = ops.dead_retry(client, settings, None if retry_all else list(entry_ids))
    _show(rows, as_json, DEAD_COLUMNS[:3] + [("NEW ENTRY", "new_entry_id")], empty="no dead letters")


@dead.command("drop")
@click.argument("entry_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="confirm dropping more than one")
@json_option
@operation
def dead_drop(settings: Settings, client: redis.Redis, entry_ids: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Delete dead letters for good (their payloads are kept in the audit row) and forget their events'
    dedupe marks, so a resend from Stripe's dashboard is queued and applied."""
    if len(entry_ids) > 1 and not yes:
        raise click.UsageError(f"dropping {len(entry_ids)} dead letters needs --yes")
    _show(ops.dead_drop(client, settings, list(entry_ids)), as_json, DEAD_COLUMNS[:3], empty="nothing dropped")


@cli.group()
def consumers() -> None:
    """The group's consumers."""


@consumers.command("prune")
@click.option(
    "--idle",
    "min_idle_ms",
    default="1h",
    show_default=True,
    type=DURATION,
    help=with_duration_help("delete consumers inactive at least this long with nothing pending"),
)
@click.option("--dry-run", is_flag=True)
@json_option
@operation
def consumers_prune(settings: Settings, client: redis.Redis, min_idle_ms: int, dry_run: bool, as_json: bool) -> None:
    """Delete consumers that have been idle long and hold nothing pending."""
    rows = ops.prune_consumers(client, settings, min_idle_ms, dry_run)
    _show(rows, as_json, [("CONSUMER", "name"), ("IDLE", "idle_ms", _duration)], empty="no consumer to prune")


def _show(rows: list[dict[str, Any]], as_json: bool, columns: list[tuple[Any, ...]], empty: str) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, columns, empty)


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def _iso(ms: int) -> str:
    return (iso(from_epoch(ms / 1000)) or "-") if ms else "-"


@cli.command()
@json_option
@operation
def sweep(settings: Settings, client: redis.Redis, as_json: bool) -> None:
    """End every expired grace period now, and drop deferred events older than 30 days (running consumers do
    both within a minute anyway)."""
    from consumer.deferred import MAX_AGE, drop_expired
    from consumer.sweep import end_expired_grace
    from models.db import database_proxy

    ended = end_expired_grace(database_proxy.obj, client, settings.keys)
    dropped = drop_expired(database_proxy.obj)
    if as_json:
        click.echo(json.dumps({"ended": ended, "deferred_dropped": dropped}, indent=2))
    else:
        click.echo(f"grace period ended for {len(ended)} communities" + (f": {', '.join(ended)}" if ended else ""))
        if dropped:
            click.echo(f"dropped {len(dropped)} deferred events older than {MAX_AGE.days} days: {', '.join(dropped)}")


# The commands that read Stripe's API live in their own module.
cli.add_command(stripe_commands.backfill)
cli.add_command(stripe_commands.reconcile)
