"""Helpers shared by the ops CLI tests (their fixtures, r and cli_env, are in conftest.py)."""

from __future__ import annotations

import json
import time

import redis
from click.testing import CliRunner, Result

from billing.config import Settings
from billing.event_queue import EventQueue
from consumer.cli import cli
from harness import Process, service_env
from models.db import database_proxy
from models.tables import AuditLog
from receiver.sample_events import build_event

STREAM, GROUP, DEAD = "stripe:events", "billing", "stripe:events:dead"  # CONTRACT.md's defaults
KEYS = Settings().keys  # the same names, as the code spells them


def invoke(env: dict[str, str], *args: str) -> Result:
    """Run `python -m consumer ARGS` in this process, as an operator would from a shell with `env`.
    The command binds the models to a database of its own; afterwards the test's binding is restored."""
    before = database_proxy.obj
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    if database_proxy.obj is not before:
        database_proxy.obj.close()
        database_proxy.initialize(before)
    return result


def one_line_error(result: Result, exit_code: int = 1) -> str:
    """The error a command failed with, checked to be a single line with no traceback."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def table(output: str) -> list[dict[str, str]]:
    """Parse an aligned table (a header line of upper-case column names, then rows), checking that every
    cell starts exactly under its column's name."""
    lines = [line for line in output.splitlines() if line.strip()]
    header_at = next(i for i, line in enumerate(lines) if line.split()[0].isupper() and line.split()[0].isalpha())
    header = lines[header_at]
    names, starts, pos = [], [], 0
    for name in [n for n in header.split("  ") if n.strip()]:
        pos = header.index(name.strip(), pos)
        names.append(name.strip())
        starts.append(pos)
        pos += len(name.strip())
    rows = []
    for line in lines[header_at + 1 :]:
        if " entries to " in line:
            break  # the summary line under a claim's table
        cells = {}
        for i, (name, start) in enumerate(zip(names, starts)):
            aligned = (start == 0 or line[start - 1] == " ") and line[start : start + 1] != " "
            assert aligned, f"{name!r} not aligned in:\n{output}"
            end = starts[i + 1] if i + 1 < len(starts) else len(line)
            cells[name] = line[start:end].strip()
        rows.append(cells)
    return rows


def enqueue(client: redis.Redis, event: dict) -> str:
    """Queue an event exactly as the receiver does; its entry id."""
    return EventQueue(client, KEYS, 3600).enqueue(
        event["id"], event["type"], event["created"], json.dumps(event).encode()
    )


def events(n: int, event_type: str = "invoice.paid", prefix: str = "c") -> list[dict]:
    return [build_event(event_type, f"{prefix}{i}") for i in range(n)]


def broken_event(community: str = "c1") -> dict:
    """One of our five types whose object cannot be read: a handler failure on every delivery."""
    event = build_event("invoice.paid", community)
    event["data"]["object"] = "not an invoice"
    return event


def deliver(client: redis.Redis, consumer: str, count: int) -> list[str]:
    """`consumer` reads `count` new entries and never acknowledges them (it died holding them)."""
    reply = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    return [entry_id.decode() for _stream, messages in reply for entry_id, _fields in messages]


def age(client: redis.Redis, consumer: str, entry_ids: list[str], idle_ms: int, deliveries: int = 1) -> None:
    """Make entries look idle `idle_ms` and delivered `deliveries` times (no sleeping), keeping their owner."""
    client.xclaim(STREAM, GROUP, consumer, 0, entry_ids, idle=idle_ms, retrycount=deliveries, justid=True)


def owners(client: redis.Redis) -> dict[str, str]:
    """Pending entry id -> the consumer holding it."""
    return {
        row["message_id"].decode(): row["consumer"].decode()
        for row in client.xpending_range(STREAM, GROUP, "-", "+", 1000)
    }


def add_dead_letter(
    client: redis.Redis,
    event: dict,
    error: str = "UnreadableEvent: invoice.paid: data.object is not an object",
    deliveries: int = 5,
    first_failed_at: int | None = None,
    source_id: str = "1795448100000-0",
) -> tuple[str, bytes]:
    """A dead letter with the contract's fields, as a consumer writes it; its id and payload."""
    payload = json.dumps(event).encode()
    entry_id = client.xadd(
        DEAD,
        {
            "event_id": event["id"],
            "event_type": event["type"],
            "created": event["created"],
            "payload": payload,
            "received_at": int(time.time() * 1000) - 60_000,
            "error": error,
            "deliveries": deliveries,
            "first_failed_at": first_failed_at or int(time.time() * 1000) - 30_000,
            "source_id": source_id,
        },
    )
    return entry_id.decode(), payload


def audit_rows(event_type: str) -> list[dict]:
    return [
        json.loads(row.event_data)
        for row in AuditLog.select().where(AuditLog.event_type == event_type).order_by(AuditLog.id)
    ]


def start_consumer(redis_url: str, database_url: str, tmp_path, name: str, **env: str) -> Process:
    return Process(
        ["consumer", "run", "--name", name, "--block-ms", "100"],
        service_env(redis_url, database_url, **env),
        str(tmp_path),
    )
