"""The baselines bench/consumer.py measures our consumer against, and the writes they share.

- the raw loop: what the job takes with nothing around it. redis-py XREADGROUP COUNT 500 on the same stream
  (its own group), json.loads per payload, and per batch one sqlite3 transaction of three executemany: a
  subscription upsert, an event row and an audit row per event; then XACK. Simple tables (only the unique
  keys), the same pragmas as ours (WAL, synchronous=NORMAL). Run as its own process, which imports nothing of
  ours: `python -m bench.consumer_baselines REDIS_URL STREAM GROUP SQLITE_PATH TOTAL` prints its figures as JSON.
- Celery (bench/consumer_celery.py) runs `write` for one event per task."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import sys
import time

import redis

SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
  id INTEGER PRIMARY KEY, community_id TEXT NOT NULL UNIQUE, stripe_customer_id TEXT,
  stripe_subscription_id TEXT, status TEXT NOT NULL, last_event_created INTEGER NOT NULL, updated_at TEXT);
CREATE TABLE IF NOT EXISTS webhook_events (
  id INTEGER PRIMARY KEY, stripe_event_id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, status TEXT NOT NULL,
  community_id TEXT, processed_at TEXT);
CREATE TABLE IF NOT EXISTS audit_log (
  id INTEGER PRIMARY KEY, event_type TEXT NOT NULL, community_id TEXT, event_data TEXT NOT NULL, created_at TEXT);
"""
UPSERT = """
INSERT INTO subscriptions (community_id, stripe_customer_id, stripe_subscription_id, status, last_event_created,
                           updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (community_id) DO UPDATE SET
  stripe_customer_id = excluded.stripe_customer_id, stripe_subscription_id = excluded.stripe_subscription_id,
  status = excluded.status, last_event_created = excluded.last_event_created, updated_at = excluded.updated_at
WHERE excluded.last_event_created >= subscriptions.last_event_created
"""
INSERT_EVENT = (
    "INSERT INTO webhook_events (stripe_event_id, event_type, status, community_id, processed_at) "
    "VALUES (?, ?, 'processed', ?, ?)"
)
INSERT_AUDIT = "INSERT INTO audit_log (event_type, community_id, event_data, created_at) VALUES (?, ?, ?, ?)"
STATUS = {
    "checkout.session.completed": "active",
    "invoice.paid": "active",
    "invoice.payment_failed": "past_due",
    "customer.subscription.deleted": "canceled",
}


def open_sqlite(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)  # transactions by hand: BEGIN ... COMMIT
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=normal")
    conn.executescript(SCHEMA)
    return conn


def rows_for(event: dict) -> tuple[tuple, tuple, tuple]:
    """The subscription upsert, event row and audit row of one parsed event."""
    obj = event["data"]["object"]
    metadata = obj.get("metadata") or {}
    subscription = obj.get("subscription") if obj["object"] != "subscription" else obj["id"]
    if obj["object"] == "invoice":  # current API shape: the subscription and its metadata under parent
        details = (obj.get("parent") or {}).get("subscription_details") or {}
        metadata, subscription = details.get("metadata") or metadata, details.get("subscription") or subscription
    community = metadata.get("community_id")
    status = STATUS.get(event["type"]) or obj.get("status")
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    audit = json.dumps({"stripe_event_id": event["id"], "status": status, "subscription": subscription})
    return (
        (community, obj.get("customer"), subscription, status, event["created"], now),
        (event["id"], event["type"], community, now),
        (event["type"], community, audit, now),
    )


def write(conn: sqlite3.Connection, events: list[dict]) -> None:
    """The three writes for `events`, in one transaction."""
    subs, rows, audits = zip(*(rows_for(event) for event in events))
    conn.execute("BEGIN")
    try:
        conn.executemany(UPSERT, subs)
        conn.executemany(INSERT_EVENT, rows)
        conn.executemany(INSERT_AUDIT, audits)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def raw_loop(redis_url: str, stream: str, group: str, db_path: str, total: int, count: int = 500) -> dict:
    """Drain `total` entries; time and CPU from just after the first read returns to the last XACK."""
    client = redis.Redis.from_url(redis_url)
    conn = open_sqlite(db_path)
    done, start, cpu_start = 0, None, None
    while done < total:
        reply = client.xreadgroup(group, "raw", {stream: ">"}, count=count, block=1000)
        if start is None:
            start, cpu_start = time.perf_counter(), time.process_time()
        if not reply:
            continue
        messages = reply[0][1]
        write(conn, [json.loads(fields[b"payload"]) for _, fields in messages])
        client.xack(stream, group, *(entry_id for entry_id, _ in messages))
        done += len(messages)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"events": done, "seconds": seconds, "cpu_seconds": cpu, "rss_mb": _rss_mb()}


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


if __name__ == "__main__":
    url, stream_key, group_name, path, count = sys.argv[1:6]
    print(json.dumps(raw_loop(url, stream_key, group_name, path, int(count))), flush=True)
