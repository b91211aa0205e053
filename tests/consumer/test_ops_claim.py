"""`python -m consumer claim`: moving stuck entries to a consumer of the operator's choosing, audited, and the
3 a.m. story end to end (an entry stuck on a dead consumer, claimed for a live one, applied)."""

from __future__ import annotations

import getpass
import json

import pytest

from harness import wait_for
from models.tables import Subscription, WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import (
    GROUP,
    STREAM,
    age,
    audit_rows,
    deliver,
    enqueue,
    events,
    invoke,
    one_line_error,
    owners,
    start_consumer,
    table,
)


@pytest.fixture
def ids(r):
    """Four pending entries: dead-worker holds three (the first two idle five minutes, delivered three times),
    other holds the fourth; a fifth is not delivered yet."""
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    entry_ids = [enqueue(r, event) for event in events(5)]
    assert deliver(r, "dead-worker", 3) == entry_ids[:3]
    age(r, "dead-worker", entry_ids[:2], idle_ms=300_000, deliveries=3)
    assert deliver(r, "other", 1) == entry_ids[3:4]
    r.xgroup_createconsumer(STREAM, GROUP, "rescuer")  # a consumer that has started and holds nothing
    return entry_ids


def deliveries(r) -> dict[str, int]:
    return {
        row["message_id"].decode(): row["times_delivered"] for row in r.xpending_range(STREAM, GROUP, "-", "+", 1000)
    }


def test_claim_by_id_moves_the_entries_and_audits_who_did_it(cli_env, r, ids):
    before = deliveries(r)
    result = invoke(cli_env, "claim", ids[0], ids[2], "--to", "rescuer")
    assert result.exit_code == 0, result.output
    assert owners(r) == {ids[0]: "rescuer", ids[1]: "dead-worker", ids[2]: "rescuer", ids[3]: "other"}
    assert deliveries(r) == before  # a manual move is not a delivery: MAX_DELIVERIES is not used up
    assert [row["ENTRY"] for row in table(result.output)] == [ids[0], ids[2]]
    assert result.output.strip().endswith("moved 2 entries to rescuer")
    (audit,) = audit_rows("ops_claim")
    assert audit["who"] == getpass.getuser()
    assert (audit["to"], audit["entries"]) == ("rescuer", [ids[0], ids[2]])


def test_claim_dry_run_moves_nothing_and_audits_nothing(cli_env, r, ids):
    before = owners(r)
    result = invoke(cli_env, "claim", ids[0], "--to", "rescuer", "--dry-run")
    assert result.exit_code == 0, result.output
    assert [(row["ENTRY"], row["CONSUMER"]) for row in table(result.output)] == [(ids[0], "dead-worker")]
    assert "would move 1 entries to rescuer" in result.output
    as_json = json.loads(invoke(cli_env, "claim", "--idle", "0", "--to", "rescuer", "--dry-run", "--json").output)
    assert (as_json["to"], as_json["dry_run"]) == ("rescuer", True)
    assert [row["entry_id"] for row in as_json["entries"]] == ids[:4]
    assert owners(r) == before
    assert audit_rows("ops_claim") == []


def test_claim_by_idle_time_takes_only_entries_idle_that_long(cli_env, r, ids):
    result = invoke(cli_env, "claim", "--idle", "60000", "--to", "rescuer", "--json")
    assert result.exit_code == 0, result.output
    assert [row["entry_id"] for row in json.loads(result.output)["entries"]] == ids[:2]
    assert owners(r) == {ids[0]: "rescuer", ids[1]: "rescuer", ids[2]: "dead-worker", ids[3]: "other"}
    (audit,) = audit_rows("ops_claim")
    assert (audit["entries"], audit["min_idle_ms"], audit["who"]) == (ids[:2], 60000, getpass.getuser())


def test_claim_of_an_entry_not_pending_names_it_and_moves_nothing(cli_env, r, ids):
    before = owners(r)
    for unknown in ("1-0", ids[4], "not-an-id"):  # never existed; in the stream but not delivered; garbage
        error = one_line_error(invoke(cli_env, "claim", ids[0], unknown, "--to", "rescuer"))
        assert unknown in error and ids[0] not in error
    assert owners(r) == before
    assert audit_rows("ops_claim") == []


def test_claim_to_a_consumer_the_group_does_not_know_is_refused(cli_env, r, ids):
    before = owners(r)
    error = one_line_error(invoke(cli_env, "claim", ids[0], "--to", "rescuerr"))
    assert "no consumer 'rescuerr'" in error and "rescuer" in error and "--new-consumer" in error
    assert owners(r) == before and not audit_rows("ops_claim")
    result = invoke(cli_env, "claim", ids[0], "--to", "rescuerr", "--new-consumer")
    assert result.exit_code == 0, result.output
    assert owners(r)[ids[0]] == "rescuerr"


def test_claim_needs_ids_or_idle_but_not_both(cli_env, r, ids):
    for args in ([], [ids[0], "--idle", "0"]):
        result = invoke(cli_env, "claim", *args, "--to", "rescuer")
        assert result.exit_code == 2 and "give entry ids or --idle DURATION" in result.output, result.output
    result = invoke(cli_env, "claim", ids[0])
    assert result.exit_code == 2 and "--to" in result.output
    assert set(owners(r).values()) == {"dead-worker", "other"}


def test_an_entry_stuck_on_a_dead_consumer_is_claimed_for_a_live_one_and_applied(
    cli_env, r, redis_url, database_url, tmp_path
):
    """3 a.m.: dead-worker read an event and vanished (it had crashed on it before, so it was delivered three
    times). Automatic reclaim is far off (CLAIM_IDLE_MS ten minutes), so the operator moves it to `live`."""
    settings = {"CLAIM_IDLE_MS": "600000"}  # the operator's shell has the consumers' settings
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    event = build_event("checkout.session.completed", "night-shift", tier="elite")
    entry_id = enqueue(r, event)
    assert deliver(r, "dead-worker", 1) == [entry_id]
    age(r, "dead-worker", [entry_id], idle_ms=120_000, deliveries=3)

    live = start_consumer(redis_url, database_url, tmp_path, "live", **settings)
    try:
        wait_for(
            lambda: b"live" in [c["name"] for c in r.xinfo_consumers(STREAM, GROUP)],
            what="the live consumer to join the group",
        )
        stuck = json.loads(invoke({**cli_env, **settings}, "pending", "--json").output)
        assert [(row["entry_id"], row["consumer"]) for row in stuck] == [(entry_id, "dead-worker")]

        result = invoke({**cli_env, **settings}, "claim", entry_id, "--to", "live")
        assert result.exit_code == 0, result.output
        # "applies it within a few seconds" (README): its next tick (5 s at most), not a backoff of 20 s
        wait_for(
            lambda: WebhookEvent.get_or_none(
                (WebhookEvent.stripe_event_id == event["id"]) & (WebhookEvent.status == "processed")
            ),
            timeout=12,
            what=f"the claimed event to be applied: {live.output()[-2000:]}",
        )
        wait_for(lambda: r.xpending(STREAM, GROUP)["pending"] == 0, what="nothing left pending")
    finally:
        live.stop()
    assert live.popen.returncode == 0, live.output()
    sub = Subscription.get(Subscription.community_id == "night-shift")
    assert (sub.tier, sub.status) == ("elite", "active")
    assert audit_rows("ops_claim")[0]["entries"] == [entry_id]


def test_the_audit_row_names_the_person_behind_sudo(cli_env, r, ids):
    result = invoke({**cli_env, "SUDO_USER": "alice"}, "claim", ids[0], "--to", "rescuer")
    assert result.exit_code == 0, result.output
    assert audit_rows("ops_claim")[-1]["who"] == "alice"
