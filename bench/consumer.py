"""Consumer throughput, on demand: `.venv/bin/python bench/consumer.py [--events N] [--batches 1,10,100] [--postgres]`.

Queues N realistic events (checkout + invoice pairs over N/2 communities) on a fresh redis-server, then
times one consumer process applying all of them, once with `--batch 1` (the baseline: one transaction
and one Redis round trip per event) and once with each larger batch size, on a fresh database each
time. Prints seconds, events per second and the speed-up over the baseline."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.db import migrate, open_database  # noqa: E402
from models.event_queue import EventQueue  # noqa: E402
from models.tables import WebhookEvent  # noqa: E402
from receiver.sample_events import build_event  # noqa: E402
from tests.services import Process, RedisServer, postgres_schema, service_env, wait_for  # noqa: E402


def events(n: int) -> list[dict]:
    out = []
    for i in range(n // 2):
        ids = dict(customer_id=f"cus_{i}", subscription_id=f"sub_{i}", created=1_700_000_000 + i)
        out.append(build_event("checkout.session.completed", f"b{i}", tier="premium", **ids))
        out.append(build_event("invoice.paid", f"b{i}", **{**ids, "created": ids["created"] + 1}))
    return out


def run_once(batch: int, queued: list[dict], database_url: str, tmp: str) -> float:
    redis = RedisServer().start()
    db = open_database(database_url)
    migrate(db)
    try:
        queue = EventQueue(redis.client(), "stripe:events", 3600)
        for event in queued:
            queue.enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())
        env = service_env(redis.url, database_url, LOG_LEVEL="WARNING")
        start = time.perf_counter()
        worker = Process(["consumer", "run", "--name", "bench", "--batch", str(batch), "--block-ms", "50"], env, tmp)
        wait_for(lambda: _count(db) == len(queued), timeout=600, interval=0.05, what="all events applied")
        elapsed = time.perf_counter() - start
        worker.stop()
        return elapsed
    finally:
        db.close()
        redis.close()


def _count(db) -> int:
    try:
        return WebhookEvent.select().count()
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--batches", default="1,10,100")
    parser.add_argument("--postgres", action="store_true", help="a fresh schema in 127.0.0.1:5432/test instead of SQLite")
    args = parser.parse_args()
    queued = events(args.events)
    tmp = tempfile.mkdtemp(prefix="bench-consumer-")
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        if args.postgres:
            with postgres_schema() as url:
                results[batch] = run_once(batch, queued, url, tmp)
        else:
            results[batch] = run_once(batch, queued, f"sqlite:///{tmp}/batch{batch}.db", tmp)
    baseline = results[min(results)]
    print(f"{len(queued)} events, one consumer, {'PostgreSQL' if args.postgres else 'SQLite'}; "
          f"time includes process start (~0.3 s)")
    print(f"{'batch':>6} {'seconds':>9} {'events/s':>10} {'vs batch ' + str(min(results)):>12}")
    for batch, seconds in results.items():
        print(f"{batch:>6} {seconds:9.2f} {len(queued) / seconds:10.0f} {baseline / seconds:11.1f}x")


if __name__ == "__main__":
    main()
