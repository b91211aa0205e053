"""Write the billing pipeline's Grafana dashboards as JSON into grafana/dashboards/.

    .venv/bin/pip install -e '.[dashboards]'
    .venv/bin/python grafana/generate.py [OUT_DIR]

The JSON is committed so a stock Grafana can load it (grafana/provisioning/); tests/pipeline/test_dashboards.py
regenerates it and fails on any difference, so edit this file and run it rather than editing the JSON.
Queries use only the metric names of the contract (../shared/CONTRACT.md, Metrics) and those the README adds,
through the template variables of variables() (data source, jobs, instances), so the JSON imports anywhere.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

# The classic dashboard JSON is what file provisioning loads in every Grafana we support; the SDK nudges
# towards the v2 schema, which still needs feature toggles, so its deprecation note is noise here.
warnings.filterwarnings("ignore", message="Prefer using dashboardv2", category=DeprecationWarning)

from grafana_foundation_sdk.builders import common as common_builders  # noqa: E402
from grafana_foundation_sdk.builders import dashboard as dash  # noqa: E402
from grafana_foundation_sdk.builders import stat, timeseries  # noqa: E402
from grafana_foundation_sdk.builders.prometheus import Dataquery  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import common, units  # noqa: E402
from grafana_foundation_sdk.models.dashboard import (  # noqa: E402
    DashboardCursorSync,
    DynamicConfigValue,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

# Every panel and variable queries the data source the dashboard's ${datasource} variable names, so the JSON
# imports into any Grafana; its default is the one grafana/provisioning/datasources/prometheus.yml creates.
DATASOURCE = common.DataSourceRef(type_val="prometheus", uid="${datasource}")
PROVISIONED_DATASOURCE = VariableOption(selected=True, text="Billing Prometheus", value="billing-prometheus")
# The scrape jobs (CONTRACT.md's names by default) and their instances are variables too: another deployment's
# job names, or one consumer of several. Group-wide gauges take max() over the instances shown.
RECEIVER = 'job="$receiver_job",instance=~"$receiver_instance"'
CONSUMER = 'job="$consumer_job",instance=~"$consumer_instance"'
RATE = "$__rate_interval"

Steps = list[tuple[str, float | None]]  # (color, value from which it applies); the first value is None


# --- building blocks -------------------------------------------------------------------------------------


def red_from(red: float, yellow: float | None = None) -> Steps:
    """Green, then yellow from `yellow` (if given), then red from `red`."""
    return [("green", None)] + ([("yellow", yellow)] if yellow is not None else []) + [("red", red)]


def query(expr: str, legend: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def thresholds(steps: Steps) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for color, value in steps])
    )


def color(name: str) -> list[DynamicConfigValue]:
    return [DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": name})]


def _with_queries(panel, queries: list[Dataquery]):
    for ref_id, q in zip("ABCDEFGH", queries):
        panel.with_target(q.ref_id(ref_id))
    return panel


def graph(
    title: str,
    description: str,
    unit: str,
    *queries: Dataquery,
    steps: Steps | None = None,
    colors: dict[str, str] | None = None,
    stacked: bool = False,
    width: int = 8,
    min_val: float | None = 0,
    max_val: float | None = None,
) -> timeseries.Panel:
    """A time series panel; `steps` draws dashed threshold lines, `colors` pins series (regexp → color)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .line_width(1)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if min_val is not None:
        panel.min(min_val)
    if max_val is not None:
        panel.max(max_val)
    if stacked:
        panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    if steps:
        panel.thresholds(thresholds(steps)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    for pattern, name in (colors or {}).items():
        panel.override_by_regexp(pattern, color(name))
    return _with_queries(panel, list(queries))


def latency(
    title: str, description: str, histogram: str, job: str, steps: Steps, by: str | None = None, width: int = 6
) -> timeseries.Panel:
    """p50 and p99 of a histogram over all instances of a job (a pair per value of label `by`, if given),
    shown in ms (the unit scales seconds)."""
    labels, legend = (f"le, {by}", f"{{{{{by}}}}} ") if by else ("le", "")

    def quantile(q: float) -> Dataquery:
        expr = f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{job}}}[{RATE}])))"
        return query(expr, f"{legend}p{round(q * 100)}")

    return graph(title, description, units.Seconds, quantile(0.5), quantile(0.99), steps=steps, width=width)


def single(title: str, description: str, unit: str, q: Dataquery, steps: Steps, width: int = 6) -> stat.Panel:
    """A big number colored by its thresholds, with the recent trend behind it."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .span(width)
        .height(8)
        .thresholds(thresholds(steps))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.AREA)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]))
    )
    return _with_queries(panel, [q])


# --- the dashboard ---------------------------------------------------------------------------------------


def receiver_panels():
    yield graph(
        "Webhook answers by status",
        "Answers to Stripe per second, by HTTP status. Red (503) means Redis refused or missed the XADD: the "
        "event was not queued and Stripe will retry it. Check Redis (`redis-cli ping`, the receiver's `/readyz`, "
        "`maxmemory-policy noeviction`). Orange (400) is bad signatures or unreadable events: see "
        '"Signature failures by reason". Yellow (413) is a body over 1 MiB.',
        units.RequestsPerSecond,
        query(f"sum by (status) (rate(billing_webhook_requests_total{{{RECEIVER}}}[{RATE}]))", "{{status}}"),
        colors={"^2..$": "green", "^400$": "orange", "^413$": "yellow", "^5..$": "red"},
        width=6,
    )
    yield latency(
        "Webhook ack latency",
        "Time from Stripe's request to our answer (p50, p99): the signature check and the enqueue script. "
        "Red is p99 over 1 s; Stripe gives up on a slow answer and retries. Slow acks almost always mean a slow "
        "Redis: check its latency (`redis-cli --latency`) and whether it is swapping or fsyncing every write.",
        "billing_webhook_request_duration_seconds",
        RECEIVER,
        red_from(1, 0.25),
    )
    yield graph(
        "Signature failures by reason",
        "Rejected `Stripe-Signature` headers per second. A few `missing`/`malformed` are scanners. Red (a "
        "sustained rate) with `mismatch` means STRIPE_WEBHOOK_SECRET does not match the endpoint's secret "
        "(after a roll, list both, comma-separated); `expired` means a clock is off or old requests are replayed.",
        units.RequestsPerSecond,
        query(f"sum by (reason) (rate(billing_webhook_signature_failures_total{{{RECEIVER}}}[{RATE}]))", "{{reason}}"),
        steps=red_from(0.1),
        width=6,
    )
    yield graph(
        "Duplicate deliveries",
        "Events seen again, per second. Receiver: Stripe delivered an event already queued (normal after a "
        "slow answer or a retry). Consumer: a redelivered entry whose event the database had already applied "
        "(normal after a crash between commit and XACK). Neither is ever applied twice; a high rate only "
        "points at slow acks or restarting consumers.",
        units.OpsPerSecond,
        query(f'sum(rate(billing_webhook_events_total{{{RECEIVER},result="duplicate"}}[{RATE}]))', "at the receiver"),
        query(f'sum(rate(billing_events_total{{{CONSUMER},outcome="duplicate"}}[{RATE}]))', "at a consumer"),
        width=6,
    )


def backlog_panels():
    yield graph(
        "Stream length and group lag",
        "Entries kept in the stream, and entries not yet delivered to any consumer (lag). Red is a lag over "
        "1000: consumers are down or cannot keep up. Run `python -m consumer stats` to see the consumers and "
        "start more workers if they are all busy.",
        units.Short,
        query(f"max(billing_stream_length{{{CONSUMER}}})", "stream length"),
        query(f"max(billing_group_lag{{{CONSUMER}}})", "group lag"),
        steps=red_from(1000),
        width=6,
    )
    yield graph(
        "Pending entries",
        "Entries delivered to a consumer and not yet acknowledged; a few for a second is normal. Red (over 100) "
        "means a consumer died holding them or keeps failing: `python -m consumer pending --min-idle 60000` "
        "shows which.",
        units.Short,
        query(f"max(billing_pending_entries{{{CONSUMER}}})", "pending"),
        steps=red_from(100, 10),
        width=6,
    )
    yield graph(
        "Oldest pending entry age",
        "Age of the oldest unacknowledged entry (from its id time). Live consumers take over entries idle longer "
        "than CLAIM_IDLE_MS (60 s), so red (over 10 min) means nothing is taking them: `python -m consumer "
        "pending`, then `python -m consumer claim --idle 60000 --to NAME` to a live consumer.",
        units.Seconds,
        query(f"max(billing_oldest_pending_age_seconds{{{CONSUMER}}})", "oldest pending"),
        steps=red_from(600, 120),
        width=6,
    )
    yield single(
        "Dead letters",
        "Events whose handler failed MAX_DELIVERIES times, now in the dead-letter stream. Red is any: "
        "`python -m consumer dead list` shows each error; fix the cause, then `python -m consumer dead retry "
        "--all` (or `dead drop ID` for an event we must not apply).",
        units.Short,
        query(f"max(billing_dead_letters{{{CONSUMER}}})", "dead letters"),
        red_from(1),
    )


def consumer_panels():
    yield graph(
        "Events by type and outcome",
        "Events applied per second, by type and outcome. `processed`, `ignored`, `stale`, `duplicate` and "
        "`deferred` (waiting for the checkout that names its community) are healthy. Red series are `failed` "
        "(a handler raised; retried with backoff) and `dead` (gave up after "
        "MAX_DELIVERIES): `python -m consumer pending` and `python -m consumer dead list` show the errors.",
        units.OpsPerSecond,
        query(
            f"sum by (event_type, outcome) (rate(billing_events_total{{{CONSUMER}}}[{RATE}]))",
            "{{event_type}} {{outcome}}",
        ),
        colors={" failed$": "orange", " dead$": "red"},
        stacked=True,
        width=12,
    )
    yield latency(
        "Event processing latency",
        "Time to apply one event inside its batch (p50, p99). Red is p99 over 5 s: the database is slow or "
        "locked. A batch past its deadline (CLAIM_IDLE_MS/2) is rolled back and retried smaller, so check the "
        "database before anything else.",
        "billing_event_processing_seconds",
        CONSUMER,
        red_from(5, 1),
    )
    yield latency(
        "End-to-end latency",
        "From the stream entry's id time (the receiver's XADD) to the commit (p50, p99): how long a customer "
        'waits for a change. Red is p99 over 60 s: a backlog or retries; see "Stream length and group lag" and '
        "`python -m consumer stats`.",
        "billing_event_end_to_end_seconds",
        CONSUMER,
        red_from(60, 10),
    )
    yield graph(
        "Time since each consumer's last success",
        "Seconds since each consumer last completed a read/apply cycle; an idle healthy consumer stays near 0. "
        'Red (over 3 min) means that consumer is stuck: the database is down (see "Database errors"), or a '
        "batch keeps running past its deadline. `python -m consumer stats` shows its pending entries and "
        "idle time.",
        units.Seconds,
        query(f"time() - billing_consumer_last_success_timestamp_seconds{{{CONSUMER}}}", "{{instance}}"),
        steps=red_from(180, 60),
        width=8,
    )
    yield graph(
        "Database errors",
        "Database errors per second, by consumer. The consumer keeps the batch in hand and retries (backoff to "
        "5 s), so nothing is lost, but nothing is applied either. Red is any sustained rate: check that "
        "DATABASE_URL answers (`python -m models migrate` connects and is idempotent).",
        units.OpsPerSecond,
        query(f"sum by (instance) (rate(billing_db_errors_total{{{CONSUMER}}}[{RATE}]))", "{{instance}}"),
        steps=red_from(0.01),
        width=8,
    )
    yield graph(
        "Reclaimed entries",
        "Entries a consumer took over from another after CLAIM_IDLE_MS idle, per second. A burst after a "
        "consumer dies or restarts is the design working; red (a steady rate) means consumers keep dying or a "
        "batch outlives CLAIM_IDLE_MS. `python -m consumer stats` and the consumers' logs.",
        units.OpsPerSecond,
        query(f"sum by (instance) (rate(billing_reclaimed_total{{{CONSUMER}}}[{RATE}]))", "{{instance}}"),
        steps=red_from(0.1),
        width=8,
    )
    yield graph(
        "Reconciled from Stripe",
        "Events of failed webhooks that reconciliation (consumers with STRIPE_API_KEY, every "
        "RECONCILE_INTERVAL_SECONDS) found in Stripe's Events API over the last 15 minutes. `already_had` is "
        "harmless (Stripe still retrying, or another endpoint of the account failing). Red is `queued`: Stripe "
        "could not deliver those events to us and we only have them now, late; when it keeps happening our "
        "endpoint is failing (BillingWebhooksMissed: check the receiver, STRIPE_WEBHOOK_SECRET and the endpoint in "
        "Stripe's dashboard). `error`: a pass failed; the consumers' log says why (a wrong key, Stripe unreachable).",
        units.Short,
        query(f"sum by (result) (increase(billing_reconciled_events_total{{{CONSUMER}}}[15m]))", "{{result}}"),
        colors={"^queued$": "red", "^already_had$": "green", "^error$": "orange"},
        width=12,
    )


def api_panels():
    yield graph(
        "API requests by endpoint and status",
        "/v1 requests per second, by route (`subscription`, `entitlements`; `unmatched` is a /v1 path that names "
        "neither) and HTTP status. Red (503) means the database did not answer and the answer was not cached: "
        "see the receiver's log (`/v1: database unavailable`) and check DATABASE_URL. Orange is a caller refused: "
        "401, a missing or wrong API_TOKEN; 403, a caller off loopback while API_TOKEN is not set. 404 on "
        "`subscription` is a community with no subscription, 400 a malformed community id.",
        units.RequestsPerSecond,
        query(
            f"sum by (endpoint, status) (rate(billing_api_requests_total{{{RECEIVER}}}[{RATE}]))",
            "{{endpoint}} {{status}}",
        ),
        colors={" 2..$": "green", " 40[13]$": "orange", " 5..$": "red"},
        width=12,
    )
    yield latency(
        "API latency by endpoint",
        "Time to answer a /v1 request (p50, p99), by route. A cached answer takes about a millisecond, one from "
        "the database a few. Red is p99 over 0.5 s: a slow database (entitlements read it on every cache miss) "
        'or a slow Redis; see "Entitlement cache hit ratio" and "Database errors".',
        "billing_api_request_duration_seconds",
        RECEIVER,
        red_from(0.5, 0.1),
        by="endpoint",
        width=12,
    )
    yield graph(
        "Entitlement cache hit ratio",
        "Share of /v1 entitlement reads answered from Redis. It drops after each change (the consumer drops "
        "that community's answer) and when Redis is down (answers come from the database). Red (under 50 %) "
        "for long: check Redis and ENTITLEMENT_TTL_SECONDS.",
        units.PercentUnit,
        query(
            f'sum(rate(billing_entitlement_cache_requests_total{{{RECEIVER},result="hit"}}[{RATE}]))'
            f" / sum(rate(billing_entitlement_cache_requests_total{{{RECEIVER}}}[{RATE}]))",
            "hit ratio",
        ),
        steps=[("red", None), ("yellow", 0.5), ("green", 0.8)],
        max_val=1,
        width=12,
    )
    yield single(
        "Scrape targets up",
        "Targets of each job that Prometheus can scrape. Red is none: for the receiver, Stripe's deliveries "
        "are failing (it retries for 3 days); for consumers, nothing is applied and the backlog panels go "
        "blank. Start them (`python -m receiver serve`, `python -m consumer`).",
        units.Short,
        query('sum by (job) (up{job=~"$receiver_job|$consumer_job"})', "{{job}}"),
        [("red", None), ("green", 1)],
        width=12,
    )


def variables():
    """The data source, then each job and its instances (all by default)."""
    yield (
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus").current(PROVISIONED_DATASOURCE)
    )
    for side, metric in (("receiver", "billing_webhook_requests_total"), ("consumer", "billing_events_total")):
        job = f"label_values({metric}, job)"
        yield (
            dash.QueryVariable(f"{side}_job")
            .label(f"{side.capitalize()} job")
            .datasource(DATASOURCE)
            .query(job)
            .definition(job)
            .refresh(VariableRefresh.ON_DASHBOARD_LOAD)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .current(VariableOption(selected=True, text=f"billing-{side}", value=f"billing-{side}"))
        )
        instances = f'label_values(up{{job="${side}_job"}}, instance)'  # up: a target that is down is listed too
        yield (
            dash.QueryVariable(f"{side}_instance")
            .label(f"{side.capitalize()} instances")
            .datasource(DATASOURCE)
            .query(instances)
            .definition(instances)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text=["All"], value=["$__all"]))
        )


def overview() -> dash.Dashboard:
    board = (
        dash.Dashboard("Billing webhooks — overview")
        .uid("billing-overview")
        .description(
            "Stripe webhooks in, Redis Stream, consumers, database, entitlements API. "
            "Generated by grafana/generate.py; edit that, not this."
        )
        .tags(["billing", "generated"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
    )
    for variable in variables():
        board.with_variable(variable)
    rows = [
        ("Receiver: Stripe to stream", receiver_panels),
        ("Backlog", backlog_panels),
        ("Consumers: stream to database", consumer_panels),
        ("Entitlements API and scraping", api_panels),
    ]
    for title, panels in rows:
        board.with_row(dash.Row(title))
        for panel in panels():
            board.with_panel(panel)
    return board


DASHBOARDS = {"billing-overview.json": overview}


PANEL_NAMES = {"timeseries": "Time series", "stat": "Stat"}


def requires(board: dict) -> list[dict]:
    """What Grafana's "Export for sharing externally" lists as `__requires`: the Grafana whose dashboard schema
    this is, the data source plugin, and each panel plugin used. No `__inputs`: the data source is the
    ${datasource} variable, and an `__inputs` placeholder would stay unresolved under file provisioning."""
    types = sorted({panel["type"] for panel in board["panels"] if panel["type"] != "row"})
    return [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "12.0.0"},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    ] + [{"type": "panel", "id": kind, "name": PANEL_NAMES.get(kind, kind), "version": ""} for kind in types]


def render(build) -> str:
    model = build().build()
    # Grafana gives panels ids on load; fixing them here keeps the JSON, and links to a panel, stable.
    for number, panel in enumerate(model.panels, start=1):
        panel.id_val = number
    board = json.loads(JSONEncoder().encode(model))
    board["__requires"] = requires(board)
    return json.dumps(board, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    out = pathlib.Path(argv[1]) if len(argv) > 1 else pathlib.Path(__file__).parent / "dashboards"
    out.mkdir(parents=True, exist_ok=True)
    for filename, build in DASHBOARDS.items():
        (out / filename).write_text(render(build), encoding="utf-8")
        print(out / filename)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
