"""`python -m consumer backfill`: the real stripe client lists events from a local server that speaks Stripe's
list API (tests/consumer/stripe_server.py), and what we do not have is queued, oldest first, through the
receiver's script."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from billing.vocabulary import HANDLED_TYPES
from consumer.backfill import (
    Backfill,
    Counts,
    Cursor,
    Enqueuer,
    Progress,
    Window,
    parse_moment,
)
from consumer.stripe_api import StripeApi, StripeApiError, retry_delay
from harness import REPO, default_sigint, service_env
from models.tables import WebhookEvent
from receiver.sample_events import API_VERSIONS, LEGACY_API_VERSION, build_event
from tests.consumer.ops_helpers import KEYS, STREAM, invoke, one_line_error
from tests.consumer.stripe_server import API_KEY, peer_events

NOW = int(time.time())


@pytest.fixture
def stripe_env(redis_url, sqlite_url, fake_stripe):
    """What the CLI reads from the environment, with Stripe's API at the local server."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": sqlite_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
    }


def ours(fake_stripe, n: int, start: int = NOW - 3600, step: int = 1, prefix: str = "b") -> list[dict]:
    """`n` events of our types, both API shapes, one community each, added to Stripe in a shuffled order."""
    events = [
        build_event(
            HANDLED_TYPES[i % len(HANDLED_TYPES)],
            f"{prefix}{i}",
            created=start + i * step,
            api_version=API_VERSIONS[i % 2],
        )
        for i in range(n)
    ]
    for event in events[::2] + events[1::2]:  # Stripe's order is by created, not by when we added them
        fake_stripe.add_event(event)
    return events


def queued(r) -> list[dict]:
    return [json.loads(fields[b"payload"]) for _id, fields in r.xrange(STREAM)]


def api_for(fake_stripe, **options) -> StripeApi:
    return StripeApi(API_KEY, fake_stripe.url, **{"network_retries": 0, **options})


def test_backfill_queues_our_events_oldest_first_as_stripe_returned_them(stripe_env, fake_stripe, r):
    events = ours(fake_stripe, 240)
    peers = [fake_stripe.add_event(peer) for peer in peer_events(NOW - 1800)]  # 50 captured, most of other types
    events += [peer for peer in peers if peer["type"] in HANDLED_TYPES]
    assert len(events) > 200  # three pages
    result = invoke(stripe_env, "backfill", "--since", "2h")
    assert result.exit_code == 0, result.output
    assert f"queued {len(events)}, already had 0, other types 0" in result.stdout
    # Every field as Stripe returned it, both API shapes, oldest first (and by id within a second).
    assert queued(r) == sorted(events, key=lambda e: (e["created"], e["id"]))
    fields = r.xrange(STREAM, count=1)[0][1]
    assert fields[b"event_type"] == events[0]["type"].encode() and int(fields[b"created"]) == events[0]["created"]
    pages = fake_stripe.event_requests()
    assert len(pages) == 3 and all(r.params["limit"] == ["100"] for r in pages)
    assert [v for name, [v] in pages[0].params.items() if name.startswith("types[")] == list(HANDLED_TYPES)
    assert "starting_after" not in pages[0].params and pages[1].params["starting_after"]


def test_a_second_run_queues_nothing(stripe_env, fake_stripe, r):
    ours(fake_stripe, 30)
    assert "queued 30, already had 0" in invoke(stripe_env, "backfill", "--since", "2h").stdout
    again = invoke(stripe_env, "backfill", "--since", "2h")
    assert again.exit_code == 0 and "queued 0, already had 30, other types 0" in again.stdout
    assert r.xlen(STREAM) == 30


def test_events_applied_before_their_dedupe_mark_expired_are_already_had(stripe_env, fake_stripe, r):
    applied, dead, failed = ours(fake_stripe, 3, start=NOW - 20 * 86_400)  # Stripe keeps 30 days, marks live 7
    WebhookEvent.create(stripe_event_id=applied["id"], event_type=applied["type"], status="processed")
    WebhookEvent.create(stripe_event_id=dead["id"], event_type=dead["type"], status="dead")  # an operator decides
    WebhookEvent.create(stripe_event_id=failed["id"], event_type=failed["type"], status="failed")
    result = invoke(stripe_env, "backfill", "--since", "30d", "--json")
    assert json.loads(result.stdout)["queued"] == 1 and json.loads(result.stdout)["already_had"] == 2
    assert [e["id"] for e in queued(r)] == [failed["id"]]  # its entry was lost: queued, and applied over its row


def test_the_window_and_the_types_are_stripes_filters(stripe_env, fake_stripe, r):
    early, inside, late = ours(fake_stripe, 3, start=NOW - 7200, step=3000)
    other = fake_stripe.add_event(
        {**build_event("invoice.paid", "x"), "type": "customer.created", "created": inside["created"]}
    )
    delivered = fake_stripe.add_event(
        build_event("invoice.paid", "ok", created=inside["created"]), delivery_success=True
    )  # backfill takes every event, delivered or not
    result = invoke(
        stripe_env,
        "backfill",
        "--since",
        str(NOW - 5000),
        "--until",
        str(NOW - 1500),
        "--types",
        f"{inside['type']},invoice.paid,customer.created",
        "--json",
    )
    counts = json.loads(result.stdout)
    assert (counts["listed"], counts["queued"], counts["other_types"]) == (3, 2, 1)
    assert {e["id"] for e in queued(r)} == {inside["id"], delivered["id"]}  # never `other`, early or late
    [request] = fake_stripe.event_requests()
    assert request.params["created[gte]"] == [str(NOW - 5000)] and request.params["created[lte]"] == [str(NOW - 1500)]
    assert other["id"] not in {e["id"] for e in queued(r)} and early["created"] < NOW - 5000 < late["created"]


def test_dry_run_queues_nothing_and_keeps_no_cursor(stripe_env, fake_stripe, r):
    events = ours(fake_stripe, 5)
    r.set(KEYS.seen(events[0]["id"]), "processed")
    result = invoke(stripe_env, "backfill", "--since", "2h", "--dry-run")
    assert "would queue 4, already had 1" in result.stdout
    assert r.xlen(STREAM) == 0 and not r.exists(KEYS.backfill_cursor)


def test_a_429_waits_for_its_retry_after(stripe_env, fake_stripe, r):
    ours(fake_stripe, 150)
    fake_stripe.fail(429, retry_after=1.5)  # the first page; no Stripe-Should-Retry, so the library gives up
    result = invoke(stripe_env, "backfill", "--since", "2h")
    assert result.exit_code == 0 and "queued 150" in result.stdout
    limited, first, second = fake_stripe.event_requests()
    assert limited.status == 429 and first.status == 200 and first.at - limited.at >= 1.5
    assert "starting_after" not in first.params and second.params["starting_after"]


def test_rate_limited_too_long_is_an_error(fake_stripe):
    fake_stripe.fail(429, times=10, retry_after=0.4)
    api = api_for(fake_stripe, rate_limit_wait=1.0)
    with pytest.raises(StripeApiError, match="rate limiting us"):
        list(api.list_events(created_gte=0))
    assert len(fake_stripe.event_requests()) == 2  # waited 0.5 (the backoff's floor); 1.0 more would pass 1.0


def test_retry_delay_is_retry_after_never_below_the_backoff():
    assert retry_delay({"Retry-After": "2"}, 1) == 2.0
    assert retry_delay({"retry-after": "0"}, 1) == 0.5 and retry_delay({}, 3) == 2.0
    assert retry_delay({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, 2) == 1.0
    assert retry_delay({"Retry-After": "nan"}, 1) == 0.5 and retry_delay({}, 20) == 30.0


def test_a_500_is_retried_and_one_that_lasts_is_one_line(stripe_env, fake_stripe, r):
    ours(fake_stripe, 10)
    fake_stripe.fail(500)
    assert "queued 10" in invoke(stripe_env, "backfill", "--since", "2h").stdout  # stripe-python retried it
    fake_stripe.fail(500, times=10)
    error = one_line_error(invoke(stripe_env, "backfill", "--since", "2h"))
    assert "Stripe answered 500 to GET /v1/events" in error and "run the same command again" in error


def test_a_page_that_times_out_is_asked_again(stripe_env, fake_stripe, r):
    ours(fake_stripe, 150)
    fake_stripe.slow(3)  # the first page
    result = invoke(stripe_env, "backfill", "--since", "2h", "--timeout", "0.5")
    assert result.exit_code == 0 and "queued 150" in result.stdout
    fake_stripe.slow(3, times=10)
    api = api_for(fake_stripe, timeout=0.3)
    with pytest.raises(StripeApiError, match=r"no answer from Stripe at http://127\.0\.0\.1:\d+ \(ReadTimeout\)"):
        list(api.list_events(created_gte=0))


class InterruptAfter(Progress):
    """Ctrl-C after `n` events."""

    def __init__(self, n: int):
        self.n = n

    def advanced(self, counts: Counts) -> None:
        if counts.queued == self.n:
            raise KeyboardInterrupt


def test_an_interrupted_backfill_resumes_after_its_cursor(fake_stripe, r, sqlite_url):
    events = sorted(ours(fake_stripe, 40), key=lambda e: e["created"])
    window = Window(NOW - 7200, NOW)
    enqueuer, cursor = Enqueuer(r, KEYS, 3600), Cursor(r, KEYS)
    first = Backfill(api_for(fake_stripe), enqueuer, cursor, window, InterruptAfter(15))
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.position == (events[14]["created"], events[14]["id"]) and r.xlen(STREAM) == 15
    later = Window(NOW - 7000, NOW + 60)  # `--since 2h` a little later: the cursor still covers it
    counts = Backfill(api_for(fake_stripe), enqueuer, cursor, later).run()
    assert (counts.before_cursor, counts.queued, counts.already_had) == (15, 25, 0)
    assert [e["id"] for e in queued(r)] == [e["id"] for e in events]
    assert not r.exists(KEYS.backfill_cursor)  # finished: nothing to resume


def test_a_cursor_resumes_only_a_run_it_covers(r, redis_url):
    cursor = Cursor(r, KEYS)
    cursor.save(Window(1000, 5000, ("invoice.paid", "invoice.payment_failed")), (3000, "evt_3"))
    assert cursor.load(Window(1000, 9000, ("invoice.paid",))) == (3000, "evt_3")
    assert cursor.load(Window(999, 9000, ("invoice.paid",))) is None  # starts earlier: events it never listed
    assert cursor.load(Window(1000, 9000, ("invoice.paid", "customer.subscription.updated"))) is None
    r.set(KEYS.backfill_cursor, "not json")
    assert cursor.load(Window(1000, 9000, ("invoice.paid",))) is None


def test_ctrl_c_says_how_to_resume_and_a_rerun_does(redis_url, sqlite_url, fake_stripe, r, tmp_path):
    total = 1500
    ours(fake_stripe, total, start=NOW - 3 * 3600, step=5)
    env = service_env(redis_url, sqlite_url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=fake_stripe.url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer", "backfill", "--since", "4h", "--progress-every", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    for line in proc.stderr:
        if line.startswith(f"20/{total}:"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: run the same command again to resume after evt_" in err and "so far: listed 1500" in out
    done = r.xlen(STREAM)
    assert 20 <= done < total
    stripe_env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": sqlite_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": fake_stripe.url,
    }
    rerun = invoke(stripe_env, "backfill", "--since", "4h", "--json")
    counts = json.loads(rerun.stdout)
    assert counts["before_cursor"] + counts["queued"] + counts["already_had"] == total and counts["already_had"] <= 1
    assert r.xlen(STREAM) == total


def test_no_key_and_a_wrong_key_are_one_line_and_show_no_key(stripe_env, fake_stripe):
    error = one_line_error(invoke({**stripe_env, "STRIPE_API_KEY": ""}, "backfill", "--since", "1h"))
    assert "STRIPE_API_KEY is not set" in error
    wrong = "sk_test_this_is_the_wrong_key_000"
    error = one_line_error(invoke({**stripe_env, "STRIPE_API_KEY": wrong}, "backfill", "--since", "1h"))
    assert "Stripe refused STRIPE_API_KEY (sk_test_…)" in error and wrong not in error
    error = one_line_error(invoke({**stripe_env, "STRIPE_API_KEY": "whsec_abcdefghijkl"}, "backfill", "--since", "1h"))
    assert "webhook signing secret" in error and "whsec_abcdefghijkl" not in error


def test_a_bad_window_is_a_usage_error(stripe_env):
    assert "neither a duration" in invoke(stripe_env, "backfill", "--since", "yesterday").output
    assert "--since is after --until" in invoke(stripe_env, "backfill", "--since", "1h", "--until", "2h").output
    assert invoke(stripe_env, "backfill", "--since", "1h").exit_code == 0


def test_parse_moment():
    assert parse_moment("72h", 1_000_000) == 1_000_000 - 72 * 3600
    assert parse_moment("30m", 100_000) == 100_000 - 1800 and parse_moment("3d", 10**6) == 10**6 - 3 * 86_400
    assert parse_moment("1795448136", 0) == 1795448136
    assert parse_moment("2026-03-16T11:00:00Z", 0) == parse_moment("2026-03-16T12:00:00+01:00", 0) == 1773658800
    assert parse_moment("2026-03-16", 0) == 1773619200


def test_legacy_and_current_shapes_are_both_queued(stripe_env, fake_stripe, r):
    legacy = fake_stripe.add_event(build_event("invoice.paid", "s1", api_version=LEGACY_API_VERSION))
    current = fake_stripe.add_event(build_event("invoice.paid", "s2", api_version="current"))
    invoke(stripe_env, "backfill", "--since", "1h")
    assert {e["api_version"] for e in queued(r)} == {legacy["api_version"], current["api_version"]}
