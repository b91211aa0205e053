"""The commands that read Stripe's API to heal what webhooks missed: `backfill`, `reconcile events` and
`reconcile subscriptions`. Thin, as the rest of consumer/cli.py (whose group they join): the work is in
consumer.backfill, consumer.reconcile and consumer.drift."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
import redis

from billing.clock import from_epoch, iso
from billing.config import Settings
from billing.vocabulary import HANDLED_TYPES
from consumer import drift
from consumer.backfill import Backfill, Counts, Cursor, Enqueuer, Found, Progress, Window, parse_moment
from consumer.cli_common import json_option, operation, print_table
from consumer.handlers import Policy
from consumer.stripe_api import StripeApi, StripeApiError
from models.db import database_proxy

timeout_option = click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0.1, 600),
    help="seconds to wait for each answer from Stripe",
)


@click.command()
@click.option("--since", required=True, help="72h, 30m, 3d (before now), or a time: 2026-03-16T11:00:00Z, epoch s")
@click.option("--until", default=None, help="the window's end, in the same forms [now]")
@click.option(
    "--types",
    default=None,
    help=f"comma-separated event types (at most 20) [the {len(HANDLED_TYPES)} "
    "we handle]; events of other types are listed and counted, never queued",
)
@click.option("--dry-run", is_flag=True, help="say what would be queued; queue nothing, keep no cursor")
@click.option("--restart", is_flag=True, help="start at --since even if an interrupted run left a cursor")
@click.option(
    "--progress-every",
    default=100,
    show_default=True,
    type=click.IntRange(1, None),
    help="without a terminal: a progress line every N events",
)
@timeout_option
@json_option
@operation
def backfill(
    settings: Settings,
    client: redis.Redis,
    since: str,
    until: str | None,
    types: str | None,
    dry_run: bool,
    restart: bool,
    progress_every: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Queue, oldest first, the events of a window that we do not have, from Stripe's Events API (Stripe keeps 30
    days). Already queued or applied events are skipped; an interrupted run resumes where it stopped."""
    now = int(time.time())
    try:
        window = Window(
            parse_moment(since, now),
            parse_moment(until, now) if until else now,
            tuple(t.strip() for t in types.split(",") if t.strip()) if types else HANDLED_TYPES,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    api = StripeApi.from_settings(settings, timeout=timeout)
    progress = BarProgress() if sys.stderr.isatty() and not as_json else LineProgress(progress_every, dry_run)
    job = Backfill(
        api,
        Enqueuer(
            client, settings.keys, settings.dedupe_ttl_seconds, settings.redis_min_replicas, settings.redis_wait_ms
        ),
        Cursor(client, settings.keys),
        window,
        progress,
    )
    try:
        counts = job.run(dry_run=dry_run, restart=restart)
    except (KeyboardInterrupt, StripeApiError, redis.RedisError) as exc:
        progress.close()
        if job.counts.listed:
            _show_counts(job.counts, window, dry_run, as_json, interrupted=True)
        if job.position and not dry_run:
            resume = f"run the same command again to resume after {job.position[1]} (--restart to start over)"
        else:
            resume = "nothing was queued; run the same command again"
        if isinstance(exc, KeyboardInterrupt):
            click.echo(f"interrupted: {resume}", err=True)
            sys.exit(130)
        raise click.ClickException(f"{exc}; {resume}") from None
    progress.close()
    _show_counts(counts, window, dry_run, as_json)


def _show_counts(counts: Counts, window: Window, dry_run: bool, as_json: bool, interrupted: bool = False) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "since": iso(from_epoch(window.since)),
                    "until": iso(from_epoch(window.until)),
                    "types": list(window.types),
                    "dry_run": dry_run,
                    "interrupted": interrupted,
                    **vars(counts),
                },
                indent=2,
            )
        )
        return
    verb = "would queue" if dry_run else "queued"
    click.echo(
        f"{'so far: ' if interrupted else ''}listed {counts.listed} events created "
        f"{iso(from_epoch(window.since))} to {iso(from_epoch(window.until))}: {verb} {counts.queued}, "
        f"already had {counts.already_had}, other types {counts.other_types}"
        + (f", handled by the interrupted run resumed {counts.before_cursor}" if counts.before_cursor else "")
    )


class LineProgress(Progress):
    """For logs and pipes: a line every `every` events."""

    def __init__(self, every: int, dry_run: bool = False):
        self.every, self.total, self.count = every, 0, 0
        self.verb = "would queue" if dry_run else "queued"

    def listed(self, count: int) -> None:
        self.count = count
        if count % self.every == 0:
            click.echo(f"listed {count} events", err=True)

    def resuming(self, position: tuple[int, str]) -> None:
        click.echo(
            f"resuming after {position[1]} (created {iso(from_epoch(position[0]))}), where an interrupted "
            "run stopped; --restart to start over",
            err=True,
        )

    def queueing(self, total: int) -> None:
        self.total = total
        click.echo(f"listed {self.count} events; going through {total}, oldest first", err=True)

    def advanced(self, counts: Counts) -> None:
        done = counts.queued + counts.already_had + counts.other_types
        if done % self.every == 0 or done == self.total:
            click.echo(
                f"{done}/{self.total}: {self.verb} {counts.queued}, already had {counts.already_had}, "
                f"other types {counts.other_types}",
                err=True,
            )

    def close(self) -> None:
        pass


class BarProgress(Progress):
    """On a terminal: a count while listing, then a bar."""

    def __init__(self) -> None:
        self.bar: Any = None  # click's progress bar, once queueing starts

    def listed(self, count: int) -> None:
        click.echo(f"\rlisting events from Stripe: {count}", nl=False, err=True)

    def resuming(self, position: tuple[int, str]) -> None:
        click.echo(f"\nresuming after {position[1]}; --restart to start over", err=True)

    def queueing(self, total: int) -> None:
        click.echo("", err=True)
        self.bar = click.progressbar(length=total, label="queueing", file=sys.stderr, show_pos=True)
        self.bar.__enter__()

    def advanced(self, counts: Counts) -> None:
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@click.group()
def reconcile() -> None:
    """Compare with Stripe: events whose webhooks failed, and each community's subscription."""


@reconcile.command("events")
@timeout_option
@json_option
@operation
def reconcile_events(settings: Settings, client: redis.Redis, timeout: float, as_json: bool) -> None:
    """Queue now the events of the last 3 days whose webhooks failed and that we do not have (what the running
    consumers do every RECONCILE_INTERVAL_SECONDS)."""
    from consumer.reconcile import Reconciler

    api = StripeApi.from_settings(settings, timeout=timeout)
    reconciler = Reconciler(
        api,
        Enqueuer(
            client, settings.keys, settings.dedupe_ttl_seconds, settings.redis_min_replicas, settings.redis_wait_ms
        ),
        client,
        settings.keys,
        settings.reconcile_interval_seconds,
        owner="cli",
    )
    counts = {found.value: n for found, n in reconciler.run().items()}
    if as_json:
        click.echo(json.dumps(counts, indent=2))
    else:
        click.echo(
            f"events whose webhooks failed: queued {counts[Found.QUEUED.value]}, already had "
            f"{counts[Found.ALREADY_HAD.value]}"
        )


@reconcile.command("subscriptions")
@click.option("--fix", is_flag=True, help="apply Stripe's state where ours differs (audit rows `reconciled`)")
@click.option("--community", "communities", multiple=True, help="only this community (repeatable)")
@timeout_option
@json_option
@operation
def reconcile_subscriptions(
    settings: Settings, client: redis.Redis, fix: bool, communities: tuple[str, ...], timeout: float, as_json: bool
) -> None:
    """Each known community's subscription as Stripe has it now against our row: tier, status, period."""
    api = StripeApi.from_settings(settings, timeout=timeout)
    report = drift.check_subscriptions(
        api, database_proxy.obj, client, settings.keys, Policy.from_settings(settings), fix=fix, communities=communities
    )
    if as_json:
        click.echo(drift.as_json(report))
        return
    rows = [
        {
            "community": d.community_id,
            "subscription": d.subscription_id,
            "field": field,
            "ours": _or_dash(values["ours"]),
            "stripe": _or_dash(values["stripe"]),
        }
        for d in report
        for field, values in d.differences.items()
    ]
    rows += [
        {"community": d.community_id, "subscription": d.subscription_id, "field": "-", "ours": "-", "stripe": d.problem}
        for d in report
        if d.problem
    ]
    if rows:
        print_table(
            rows,
            [
                ("COMMUNITY", "community"),
                ("SUBSCRIPTION", "subscription"),
                ("FIELD", "field"),
                ("OURS", "ours"),
                ("STRIPE", "stripe"),
            ],
            empty="",
        )
    differing = sum(1 for d in report if d.differences)
    problems = sum(1 for d in report if d.problem)
    if not differing:
        click.echo(f"all {len(report) - problems} communities compared match Stripe")
    elif fix:
        click.echo(f"fixed {sum(d.fixed for d in report)} of {len(report)} communities (audit rows `reconciled`)")
    else:
        click.echo(f"{differing} of {len(report)} communities differ from Stripe; --fix applies Stripe's state")
    if problems:
        click.echo(f"{problems} could not be compared (see STRIPE above)")


def _or_dash(value: object) -> object:
    return "-" if value is None else value
