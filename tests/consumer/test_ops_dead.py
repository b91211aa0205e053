"""`python -m consumer dead list | retry | drop` and `consumers prune`: what they show, what they change,
the audit row each change leaves, and that a dead letter is never lost when the audit cannot be written."""

from __future__ import annotations

import datetime as dt
import getpass
import json

import pytest

from harness import free_port, wait_for
from models.tables import Subscription, WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import (
    DEAD,
    GROUP,
    STREAM,
    add_dead_letter,
    audit_rows,
    broken_event,
    deliver,
    enqueue,
    invoke,
    one_line_error,
    start_consumer,
    table,
)

LONG_ERROR = "UnreadableEvent: invoice.paid: data.object is not an object " + "x" * 100


@pytest.fixture
def letters(r):
    """Three dead letters: (entry id, event, payload bytes)."""
    out = []
    for n in range(3):
        event = build_event("invoice.payment_failed", f"d{n}")
        out.append((*add_dead_letter(r, event, source_id=f"17954481{n:05d}-0"), event))
    return [(entry_id, event, payload) for entry_id, payload, event in out]


def fields(r, key: str, entry_id: str) -> dict[str, bytes]:
    ((_id, raw),) = r.xrange(key, entry_id, entry_id)
    return {k.decode(): v for k, v in raw.items()}


def test_dead_list_table_and_json(r, redis_url, tmp_path):
    cli_env = {"REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{tmp_path}/never-created.db"}
    assert invoke(cli_env, "dead", "list").output.strip() == "no dead letters"
    event = broken_event()
    failed_at = int(dt.datetime(2026, 11, 23, 3, 1, 12, 345000, tzinfo=dt.timezone.utc).timestamp() * 1000)
    entry_id, _payload = add_dead_letter(
        r, event, error=LONG_ERROR, deliveries=5, first_failed_at=failed_at, source_id="1795448400000-3"
    )

    (row,) = table(invoke(cli_env, "dead", "list").output)
    assert (row["ENTRY"], row["EVENT"], row["TYPE"], row["DELIVERIES"]) == (entry_id, event["id"], "invoice.paid", "5")
    assert row["FIRST FAILED"] == "2026-11-23T03:01:12Z"
    assert row["ERROR"] == LONG_ERROR[:80]  # one screen line; --json has all of it

    (listed,) = json.loads(invoke(cli_env, "dead", "list", "--json").output)
    assert listed == {
        "entry_id": entry_id,
        "event_id": event["id"],
        "event_type": "invoice.paid",
        "error": LONG_ERROR,
        "deliveries": 5,
        "first_failed_at": failed_at,
        "source_id": "1795448400000-3",
    }


def test_a_failing_event_is_dead_lettered_and_retry_puts_it_back_unchanged(
    cli_env, r, redis_url, database_url, tmp_path
):
    event = broken_event("c1")
    source_id = enqueue(r, event)
    worker = start_consumer(redis_url, database_url, tmp_path, "w1", MAX_DELIVERIES="2", CLAIM_IDLE_MS="400")
    try:
        wait_for(lambda: r.xlen(DEAD) == 1, what="the broken event to reach the dead letters")
    finally:
        worker.stop()
    assert r.xpending(STREAM, GROUP)["pending"] == 0  # acknowledged: nothing else waits on it
    assert WebhookEvent.get(WebhookEvent.stripe_event_id == event["id"]).status == "dead"
    (dead,) = json.loads(invoke(cli_env, "dead", "list", "--json").output)
    assert (dead["event_id"], dead["event_type"], dead["deliveries"], dead["source_id"]) == (
        event["id"],
        "invoice.paid",
        2,
        source_id,
    )
    assert "data.object" in dead["error"] and dead["first_failed_at"] > 0

    result = invoke(cli_env, "dead", "retry", dead["entry_id"])
    assert result.exit_code == 0, result.output
    assert r.xlen(DEAD) == 0
    (_original, (new_id, _)) = r.xrange(STREAM)
    assert [row["NEW ENTRY"] for row in table(result.output)] == [new_id.decode()]
    assert fields(r, STREAM, new_id) == fields(r, STREAM, source_id)  # the contract's five fields
    assert fields(r, STREAM, new_id)["payload"] == json.dumps(event).encode()  # byte for byte
    (audit,) = audit_rows("ops_dead_retry")
    assert audit == {
        "who": getpass.getuser(),
        "entries": [dead["entry_id"]],
        "new_entries": [new_id.decode()],
        "event_ids": [event["id"]],
    }


def test_a_retried_dead_letter_is_applied_by_a_running_consumer(cli_env, r, redis_url, database_url, tmp_path):
    """The handler's bug is fixed and deployed; the dead letter (a good event after all) is retried."""
    event = build_event("checkout.session.completed", "phoenix", tier="exclusive")
    WebhookEvent.create(stripe_event_id=event["id"], event_type=event["type"], status="dead", error_message="bug")
    entry_id, _payload = add_dead_letter(r, event, error="KeyError: 'tier'")
    live = start_consumer(redis_url, database_url, tmp_path, "live")
    try:
        wait_for(lambda: r.xinfo_consumers(STREAM, GROUP), what="the consumer to join the group")
        assert invoke(cli_env, "dead", "retry", entry_id).exit_code == 0
        wait_for(
            lambda: WebhookEvent.get(WebhookEvent.stripe_event_id == event["id"]).status == "processed",
            what=f"the retried event to be applied: {live.output()[-2000:]}",
        )
        wait_for(lambda: r.xpending(STREAM, GROUP)["pending"] == 0, what="it to be acknowledged")
    finally:
        live.stop()
    sub = Subscription.get(Subscription.community_id == "phoenix")
    assert (sub.tier, sub.status) == ("exclusive", "active")
    assert r.xlen(DEAD) == 0


def test_dead_retry_all(cli_env, r, letters):
    result = invoke(cli_env, "dead", "retry", "--all", "--json")
    assert result.exit_code == 0, result.output
    retried = json.loads(result.output)
    assert [r["entry_id"] for r in retried] == [entry_id for entry_id, _, _ in letters]
    assert r.xlen(DEAD) == 0
    assert [f[b"payload"] for _id, f in r.xrange(STREAM)] == [payload for _, _, payload in letters]
    assert [r["new_entry_id"] for r in retried] == [i.decode() for i, _ in r.xrange(STREAM)]
    (audit,) = audit_rows("ops_dead_retry")
    assert audit["event_ids"] == [event["id"] for _, event, _ in letters]

    again = invoke(cli_env, "dead", "retry", "--all")
    assert (again.exit_code, again.output.strip()) == (0, "no dead letters")
    assert len(audit_rows("ops_dead_retry")) == 1  # nothing done, nothing to audit


def test_dead_retry_arguments(cli_env, r, letters):
    first = letters[0][0]
    for args in ([], [first, "--all"]):
        result = invoke(cli_env, "dead", "retry", *args)
        assert result.exit_code == 2 and "give dead-letter entry ids or --all" in result.output, result.output
    assert invoke(cli_env, "dead", "retry", first, first).exit_code == 0  # the same id twice is one retry
    assert r.xlen(STREAM) == 1 and r.xlen(DEAD) == 2


def test_dead_retry_or_drop_of_an_unknown_id_names_it_and_changes_nothing(cli_env, r, letters):
    first = letters[0][0]
    for command in (["retry"], ["drop", "--yes"]):
        for unknown in ("1-0", "not-an-id"):
            error = one_line_error(invoke(cli_env, "dead", *command, first, unknown))
            assert f"no dead letter {unknown} in {DEAD}" in error
    assert r.xlen(DEAD) == 3 and r.exists(STREAM) == 0
    assert audit_rows("ops_dead_retry") == audit_rows("ops_dead_drop") == []


def test_dead_drop_keeps_the_payload_in_the_audit_row(cli_env, r, letters):
    (entry_id, event, payload), *rest = letters
    result = invoke(cli_env, "dead", "drop", entry_id)
    assert result.exit_code == 0, result.output
    assert [row["ENTRY"] for row in table(result.output)] == [entry_id]
    assert [i.decode() for i, _ in r.xrange(DEAD)] == [i for i, _, _ in rest]
    (audit,) = audit_rows("ops_dead_drop")
    assert audit == {
        "who": getpass.getuser(),
        "entries": [entry_id],
        "event_ids": [event["id"]],
        "payloads": [payload.decode()],
    }


def test_dropping_several_dead_letters_needs_yes(cli_env, r, letters):
    ids = [entry_id for entry_id, _, _ in letters[:2]]
    refused = invoke(cli_env, "dead", "drop", *ids)
    assert refused.exit_code == 2 and "dropping 2 dead letters needs --yes" in refused.output
    assert r.xlen(DEAD) == 3 and audit_rows("ops_dead_drop") == []

    assert invoke(cli_env, "dead", "drop", *ids, "--yes").exit_code == 0
    assert [i.decode() for i, _ in r.xrange(DEAD)] == [letters[2][0]]
    (audit,) = audit_rows("ops_dead_drop")
    assert audit["entries"] == ids and audit["payloads"] == [p.decode() for _, _, p in letters[:2]]


def test_a_drop_that_cannot_be_audited_keeps_the_dead_letter(r, redis_url, letters):
    """The audit row is the only copy of a dropped payload: no row, no drop."""
    cli_env = {"REDIS_URL": redis_url, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/billing"}
    assert "database unreachable" in one_line_error(invoke(cli_env, "dead", "drop", letters[0][0]))
    assert r.xlen(DEAD) == 3


def test_a_database_never_migrated_is_one_line_too(r, redis_url, database_url, letters):
    cli_env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}  # no `db` fixture: no tables
    assert "billing_audit_log" in one_line_error(invoke(cli_env, "dead", "drop", letters[0][0]))
    assert r.xlen(DEAD) == 3


@pytest.fixture
def crew(r):
    """Three consumers: `gone` (created, never read), `done` (applied and acknowledged what it read), `holder`
    (one entry pending)."""
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    r.xgroup_createconsumer(STREAM, GROUP, "gone")
    enqueue(r, build_event("invoice.paid", "p1"))
    enqueue(r, build_event("invoice.paid", "p2"))
    assert r.xack(STREAM, GROUP, *deliver(r, "done", 1)) == 1
    assert len(deliver(r, "holder", 1)) == 1


def names(r) -> list[str]:
    return sorted(c["name"].decode() for c in r.xinfo_consumers(STREAM, GROUP))


def test_prune_deletes_idle_consumers_holding_nothing(cli_env, r, crew):
    result = invoke(cli_env, "consumers", "prune", "--idle", "0")
    assert result.exit_code == 0, result.output
    assert sorted(row["CONSUMER"] for row in table(result.output)) == ["done", "gone"]
    assert names(r) == ["holder"]  # its pending entry would be lost with it
    (audit,) = audit_rows("ops_consumers_prune")
    assert (audit["who"], sorted(audit["consumers"]), audit["min_idle_ms"]) == (getpass.getuser(), ["done", "gone"], 0)


def test_prune_dry_run_and_the_default_idle_time_delete_nothing(cli_env, r, crew):
    dry = invoke(cli_env, "consumers", "prune", "--idle", "0", "--dry-run", "--json")
    assert sorted(row["name"] for row in json.loads(dry.output)) == ["done", "gone"]
    default = invoke(cli_env, "consumers", "prune")  # an hour idle: nobody yet
    assert (default.exit_code, default.output.strip()) == (0, "no consumer to prune")
    assert names(r) == ["done", "gone", "holder"]
    assert audit_rows("ops_consumers_prune") == []
