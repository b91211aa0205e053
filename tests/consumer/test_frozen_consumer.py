"""A consumer frozen with its batch transaction open (SIGSTOP here; a paused container or a network
partition in production), on real PostgreSQL. Its row locks must not stall the others: the server ends
the frozen transaction within seconds, another consumer takes its entries over and applies them once,
events of other communities keep flowing meanwhile, and the frozen consumer, once resumed, finds its
session gone, reconnects and carries on."""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import pytest

from harness import postgres_schema, service_env, wait_for
from models.db import (
    bound_transaction,
    database_proxy,
    is_postgres,
    open_database,
    transaction_bounds,
    write_transaction,
)
from models.migrations import migrate
from models.tables import WebhookEvent
from tests.consumer.fault_helpers import DEAD, GROUP, STREAM, applied_once, consumer, enqueue_all, events_for, pending
from tests.database_helpers import DATABASES

# The frozen consumer runs with the production default (CLAIM_IDLE_MS 60 s, so a 30 s batch deadline,
# and its transactions are ended by the server after 5 s idle). The one taking over reclaims after 1 s,
# long before the server ends the frozen transaction, so it meets the locks and must not wait on them long.
FROZEN_IDLE_LIMIT_S = transaction_bounds(30_000)["idle_in_transaction_session_timeout"] / 1000
TAKEOVER = {"CLAIM_IDLE_MS": "1000"}
# Before the bound, the taking-over consumer waited out its whole deadline on the frozen locks every cycle
# (30 s in production) and the frozen entries were never applied while their consumer stayed frozen.
UNRELATED_WITHIN_S = 3.0
FROZEN_APPLIED_WITHIN_S = FROZEN_IDLE_LIMIT_S + 10


@pytest.fixture
def pg_url():
    with postgres_schema() as url:
        db = open_database(url)
        migrate(db)
        yield url
        db.close()
        database_proxy.initialize(None)


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process: R, S, T (stopped) ..."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def all_processed(events: list[dict]) -> bool:
    ids = [e["id"] for e in events]
    return WebhookEvent.select().where(
        WebhookEvent.stripe_event_id.in_(ids), WebhookEvent.status == "processed"
    ).count() == len(ids)


@pytest.mark.skipif("postgresql" not in DATABASES, reason="PostgreSQL is not reachable (TEST_PG_URL)")
def test_a_frozen_consumer_does_not_stall_the_others(redis_server, redis_url, pg_url, tmp_path):
    client = redis_server.client()
    env = service_env(redis_url, pg_url)
    # Ids of this run only: besides its rows, the frozen batch holds advisory locks (on subscription ids), and
    # those are database-wide, shared with other tests' schemas.
    run = uuid.uuid4().hex[:8]
    held = events_for(10, f"f{run}-")  # the batch the frozen consumer holds: 5 communities, their rows locked
    enqueue_all(client, held)
    frozen = consumer(env, tmp_path, "frozen", BILLING_FAULT="stop:before_commit")
    takeover = None
    try:
        wait_for(lambda: process_state(frozen.popen.pid) == "T", what=f"the consumer to freeze: {frozen.output()}")
        frozen_at = time.monotonic()
        assert [r["consumer"] for r in client.xpending_range(STREAM, GROUP, "-", "+", 100)] == [b"frozen"] * 10
        assert WebhookEvent.select().count() == 0  # its batch is open, not committed

        takeover = consumer(env, tmp_path, "takeover", **TAKEOVER)
        # Events of other communities, a pair at a time, each applied within seconds, until the takeover
        # has applied the frozen consumer's batch too (while that consumer is still frozen).
        unrelated, latencies = [], []
        while not all_processed(held):
            assert time.monotonic() - frozen_at < FROZEN_APPLIED_WITHIN_S, (
                f"the frozen consumer's entries were not applied within {FROZEN_APPLIED_WITHIN_S}s:\n"
                f"{takeover.output()[-3000:]}"
            )
            pair = events_for(2, f"u{run}-{len(unrelated)}-")
            sent = time.monotonic()
            enqueue_all(client, pair)
            wait_for(
                lambda: all_processed(pair),
                timeout=UNRELATED_WITHIN_S,
                what=f"events of other communities to be applied: {takeover.output()[-3000:]}",
            )
            latencies.append(time.monotonic() - sent)
            unrelated += pair
        taken_over_after = time.monotonic() - frozen_at
        assert process_state(frozen.popen.pid) == "T"  # all of it done while the frozen consumer stayed frozen
        assert applied_once(held + unrelated) == (0, 0)
        wait_for(lambda: pending(client) == 0, what="every entry to be acknowledged")

        # Resumed: its transaction is gone; it must notice, reconnect and go on, not exit, not redo anything.
        frozen.signal(signal.SIGCONT)
        wait_for(
            lambda: "answer again; resuming" in frozen.output(),
            what=f"the resumed consumer to reconnect: {frozen.output()[-3000:]}",
        )
        assert frozen.popen.poll() is None, frozen.output()
        takeover.stop()
        assert takeover.popen.returncode == 0, takeover.output()
        later = events_for(4, f"r{run}-")  # only the resumed consumer is left to apply these
        enqueue_all(client, later)
        wait_for(lambda: all_processed(later), what=f"the resumed consumer to apply new events: {frozen.output()}")
        wait_for(lambda: pending(client) == 0, what="every entry to be acknowledged")
        frozen.stop()
        assert frozen.popen.returncode == 0, frozen.output()
    finally:
        frozen.signal(signal.SIGKILL)  # never leave a stopped process (and its open transaction) behind
        frozen.popen.wait()
        frozen.log.close()
        if takeover is not None:
            takeover.stop()

    everything = held + unrelated + later
    assert applied_once(everything) == (0, 0)
    assert WebhookEvent.select().count() == len(everything)
    assert {r.status for r in WebhookEvent.select()} == {"processed"}
    assert client.xlen(DEAD) == 0
    print(
        f"\nfigures: frozen batch applied by the takeover {taken_over_after:.1f}s after the freeze "
        f"(server ends idle transactions after {FROZEN_IDLE_LIMIT_S:.0f}s); {len(latencies)} pairs of other "
        f"communities' events meanwhile, latency max {max(latencies):.2f}s, "
        f"median {sorted(latencies)[len(latencies) // 2]:.2f}s"
    )


def test_the_bounds_follow_the_batch_deadline():
    assert transaction_bounds(30_000) == {
        "statement_timeout": 30_000,
        "lock_timeout": 15_000,
        "idle_in_transaction_session_timeout": 5_000,
    }
    assert transaction_bounds(2_000) == {
        "statement_timeout": 2_000,
        "lock_timeout": 1_000,
        "idle_in_transaction_session_timeout": 1_000,
    }
    assert transaction_bounds(8_000)["idle_in_transaction_session_timeout"] == 2_000
    # A deadline already passed still sets real limits (0 would mean none at all).
    assert min(transaction_bounds(-5).values()) >= 1
    # With no deadline (the grace sweep) only the idle limit applies.
    assert transaction_bounds(None) == {"idle_in_transaction_session_timeout": 5_000}


def test_every_consumer_transaction_carries_the_bounds(db):
    def setting(name: str) -> int:  # in ms
        return int(db.execute_sql("SELECT setting FROM pg_settings WHERE name = %s", (name,)).fetchone()[0])

    if not is_postgres(db):  # SQLite: one writer at a time, busy_timeout bounds the wait; nothing to set
        with write_transaction(db):
            bound_transaction(db, time.monotonic() + 60)
        return
    names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
    session = [setting(name) for name in names]
    with write_transaction(db):  # the grace sweep's shape: no deadline, only the idle limit
        assert setting("idle_in_transaction_session_timeout") == 5_000
        bound_transaction(db, time.monotonic() + 60)  # a batch with 60 s to go
        statement, lock, idle = (setting(name) for name in names)
        assert 59_000 < statement <= 60_000 and lock == statement // 2 and idle == 5_000
    assert [setting(name) for name in names] == session  # SET LOCAL: gone with the transaction
