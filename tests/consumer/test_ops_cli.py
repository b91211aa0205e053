"""The ops commands that look: `stats` and `pending`, and how every command fails (one line, no traceback)
when Redis or the group is not there. Run in this process through click, and as `python -m consumer`."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from harness import REPO, Process, free_port, service_env, wait_for
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import (
    GROUP,
    STREAM,
    add_dead_letter,
    age,
    broken_event,
    deliver,
    enqueue,
    events,
    invoke,
    one_line_error,
    table,
)

TWO_HOURS_MS = 2 * 3600 * 1000


@pytest.fixture
def redis_env(redis_url, tmp_path):
    """The ops CLI's environment with Redis only: looking needs no database, this one is never even created."""
    return {"REDIS_URL": redis_url, "DATABASE_URL": f"sqlite:///{tmp_path}/never-created.db"}


@pytest.fixture
def busy(r):
    """One entry received two hours ago and four since; dead-worker holds two, other one, two are undelivered;
    one dead letter."""
    old = build_event("invoice.paid", "old")
    old_id = r.xadd(
        STREAM,
        {
            "event_id": old["id"],
            "event_type": old["type"],
            "created": old["created"],
            "payload": json.dumps(old),
            "received_at": int(time.time() * 1000) - TWO_HOURS_MS,
        },
        id=f"{int(time.time() * 1000) - TWO_HOURS_MS}-0",
    ).decode()
    ids = [old_id] + [enqueue(r, event) for event in events(4)]
    r.xgroup_create(STREAM, GROUP, id="0")
    assert deliver(r, "dead-worker", 2) == ids[:2]
    assert deliver(r, "other", 1) == ids[2:3]
    add_dead_letter(r, broken_event())
    return ids


def test_stats_json_counts_what_is_in_the_stream(redis_env, busy):
    result = invoke(redis_env, "stats", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["stream_length"], stats["group_lag"], stats["pending"], stats["dead_letters"]) == (5, 2, 3, 1)
    assert stats["oldest_pending_id"] == busy[0]
    assert 7200 <= stats["oldest_pending_age_seconds"] < 7200 + 30
    consumers = {c["name"]: c for c in stats["consumers"]}
    assert {name: c["pending"] for name, c in consumers.items()} == {"dead-worker": 2, "other": 1}
    assert all(isinstance(c["idle_ms"], int) and 0 <= c["idle_ms"] < 30_000 for c in consumers.values())


def test_stats_table(redis_env, busy):
    result = invoke(redis_env, "stats")
    assert result.exit_code == 0, result.output
    summary, consumers = result.output.split("\n\n")
    lines = [re.match(r"(\S.*?)  +(\S.*)$", line) for line in summary.splitlines()]
    assert len({m.start(2) for m in lines}) == 1, f"values not aligned:\n{summary}"
    pairs = {m[1]: m[2] for m in lines}
    assert pairs["stream"] == f"{STREAM} (5 entries)"
    assert (pairs["group"], pairs["lag (undelivered)"]) == (GROUP, "2")
    assert (pairs["pending"], pairs["dead letters"]) == ("3", "1")
    assert pairs["oldest pending"] == f"{busy[0]} (2.0h old)"
    rows = {row["CONSUMER"]: row for row in table(consumers)}
    assert {name: row["PENDING"] for name, row in rows.items()} == {"dead-worker": "2", "other": "1"}
    assert all(row["IDLE"].endswith("s") for row in rows.values())


def test_stats_without_a_group_or_a_stream_is_one_line(redis_env, r):
    assert "no stream 'stripe:events'" in one_line_error(invoke(redis_env, "stats"))
    enqueue(r, events(1)[0])  # the receiver ran, no consumer ever did
    for command in (["stats"], ["pending"], ["claim", "--idle", "0", "--to", "x"], ["consumers", "prune"]):
        assert "no consumer group 'billing' on 'stripe:events'" in one_line_error(invoke(redis_env, *command)), command


def test_stats_watch_refreshes_until_ctrl_c(redis_env, busy, redis_url, tmp_path):
    watch = Process(["consumer", "stats", "--watch"], service_env(redis_url, redis_env["DATABASE_URL"]), str(tmp_path))
    try:
        wait_for(lambda: "CONSUMER" in watch.output() and "dead-worker" in watch.output(), what="the first screen")
        watch.signal(signal.SIGINT)
        assert watch.wait(timeout=10) == 0, watch.output()
    finally:
        watch.stop()
    assert "Traceback" not in watch.output() and "lag (undelivered)  2" in watch.output()


@pytest.fixture
def held(r):
    """Four entries: dead-worker holds three (two idle five minutes, delivered three times), other holds one."""
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    evs = events(4)
    ids = [enqueue(r, event) for event in evs]
    assert deliver(r, "dead-worker", 3) == ids[:3]
    age(r, "dead-worker", ids[:2], idle_ms=300_000, deliveries=3)
    assert deliver(r, "other", 1) == ids[3:]
    return list(zip(ids, evs))


def test_pending_table_shows_who_holds_what_for_how_long(redis_env, held):
    result = invoke(redis_env, "pending")
    assert result.exit_code == 0, result.output
    rows = table(result.output)
    assert [row["ENTRY"] for row in rows] == [entry_id for entry_id, _ in held]
    assert [row["EVENT"] for row in rows] == [event["id"] for _, event in held]
    assert {row["TYPE"] for row in rows} == {"invoice.paid"}
    assert [row["CONSUMER"] for row in rows] == ["dead-worker"] * 3 + ["other"]
    assert [row["DELIVERIES"] for row in rows] == ["3", "3", "1", "1"]
    assert [row["IDLE"] for row in rows[:2]] == ["5.0m", "5.0m"]
    assert all(row["IDLE"].endswith("s") for row in rows[2:])


def test_pending_filters(redis_env, held):
    ids = [entry_id for entry_id, _ in held]

    def listed(*args: str) -> list[str]:
        result = invoke(redis_env, "pending", "--json", *args)
        assert result.exit_code == 0, result.output
        return [row["entry_id"] for row in json.loads(result.output)]

    assert listed() == ids
    assert listed("--consumer", "other") == ids[3:]
    assert listed("--consumer", "dead-worker") == ids[:3]
    assert listed("--min-idle", "60000") == ids[:2]  # the entries read a moment ago are excluded
    assert listed("--min-idle", "60000", "--consumer", "other") == []
    assert listed("--count", "2") == ids[:2]
    assert listed("--consumer", "nobody") == []
    assert invoke(redis_env, "pending", "--consumer", "nobody").output.strip() == "nothing pending"


def test_pending_json(redis_env, held):
    result = invoke(redis_env, "pending", "--json", "--count", "1")
    (row,) = json.loads(result.output)
    assert set(row) == {"entry_id", "event_id", "event_type", "consumer", "idle_ms", "deliveries"}
    entry_id, event = held[0]
    assert (row["entry_id"], row["event_id"], row["event_type"], row["consumer"], row["deliveries"]) == (
        entry_id,
        event["id"],
        "invoice.paid",
        "dead-worker",
        3,
    )
    assert 300_000 <= row["idle_ms"] < 330_000


UNREACHABLE_COMMANDS = [
    ["stats"],
    ["stats", "--json"],
    ["pending"],
    ["pending", "--json"],
    ["claim", "1-0", "--to", "x"],
    ["claim", "--idle", "0", "--to", "x"],
    ["dead", "list"],
    ["dead", "list", "--json"],
    ["dead", "retry", "1-0"],
    ["dead", "retry", "--all"],
    ["dead", "drop", "1-0"],
    ["consumers", "prune"],
]


@pytest.mark.parametrize("command", UNREACHABLE_COMMANDS, ids=" ".join)
def test_redis_unreachable_is_one_line(command, tmp_path):
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": f"sqlite:///{tmp_path}/b.db"}
    assert "Redis unreachable at redis://127.0.0.1:" in one_line_error(invoke(env, *command))


def test_redis_unreachable_never_prints_the_password(tmp_path):
    env = {"REDIS_URL": f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0", "DATABASE_URL": f"sqlite:///{tmp_path}/b.db"}
    result = invoke(env, "stats")
    assert "Redis unreachable" in one_line_error(result)
    assert "s3cret-pw" not in result.output


def test_redis_that_accepts_but_never_answers_is_unreachable_too(tmp_path):
    with socket.socket() as silent:  # the kernel completes the connection; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        env = {
            "REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            "DATABASE_URL": f"sqlite:///{tmp_path}/b.db",
        }
        assert "Redis unreachable" in one_line_error(invoke(env, "pending"))


def test_python_m_consumer_stats_is_the_entry_point(redis_env, busy, redis_url):
    run = subprocess.run(
        [sys.executable, "-m", "consumer", "stats", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env=service_env(redis_url, redis_env["DATABASE_URL"]),
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["pending"] == 3


def test_python_m_consumer_stats_with_redis_down_exits_non_zero_without_traceback(tmp_path):
    env = service_env(f"redis://127.0.0.1:{free_port()}/0", f"sqlite:///{tmp_path}/b.db")
    run = subprocess.run(
        [sys.executable, "-m", "consumer", "stats"], cwd=REPO, capture_output=True, text=True, timeout=30, env=env
    )
    assert run.returncode == 1
    assert run.stdout == "" and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Redis unreachable" in run.stderr, run.stderr
