"""Throughput on a Redis Cluster with 4 stream partitions against 1, on demand:
`.venv/bin/python bench/partitions.py [--seconds 10 --events 10000]` (needs Debian's `wrk`).

Starts a local Redis Cluster (3 primaries, 3 replicas, append-only, harness.RedisCluster). For each partition count,
in the same run and on the same cluster: the receiver (`receiver serve`, its default gunicorn settings) under wrk (32
connections, distinct signed events, as bench/receiver_load.py) gives the intake rate; then `--events` events queued
as the receiver queues them are drained by two consumers (`consumer run`, one SQLite database) and timed.
With one partition every event goes to the stream's one slot, so one primary takes all the writes and reads; with
four they spread over the primaries. Prints each figure and its ratio to the 1-partition run. On one machine the
nodes share its cores, so this shows the cost of partitioning more than the gain a cluster of machines would see."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.receiver_load import request_files, wrk  # noqa: E402
from billing.config import Settings  # noqa: E402
from billing.event_queue import EventQueue  # noqa: E402
from billing.redis_io import connect_redis  # noqa: E402
from harness import Process, RedisCluster, service_env, start_receiver, wait_for  # noqa: E402
from models.db import open_database  # noqa: E402
from models.migrations import migrate  # noqa: E402
from models.tables import WebhookEvent  # noqa: E402
from receiver.sample_events import EVENT_TYPES, build_event  # noqa: E402


def intake(env: dict, tmp: str, seconds: int) -> dict:
    files = request_files(tmp, 4000 * seconds, 2)
    receiver, base = start_receiver(env, tmp)
    try:
        return wrk(base, seconds, 32, 2, files)
    finally:
        receiver.stop()


def drain(env: dict, settings: Settings, tmp: str, events: int) -> float:
    """Seconds two consumers take to apply `events` queued events (one row each)."""
    database_url = f"sqlite:///{tmp}/drain-{settings.stream_partitions}.db"
    db = open_database(database_url)
    migrate(db)
    queue = EventQueue(connect_redis(settings.redis_url, timeout=5), settings.keys, 3600)
    batch = []
    for n in range(events):
        event = build_event(EVENT_TYPES[n % len(EVENT_TYPES)], f"drain-{n % 2000}", created=1_700_000_000 + n)
        batch.append(
            (f"{event['id']}-{settings.stream_partitions}", event["type"], event["created"], json.dumps(event).encode())
        )
        if len(batch) == 500:
            queue.enqueue_many(batch)
            batch = []
    if batch:
        queue.enqueue_many(batch)
    env = {**env, "DATABASE_URL": database_url}
    start = time.perf_counter()
    consumers = [Process(["consumer", "run", "--name", f"d{n}"], env, tmp) for n in range(2)]
    try:
        wait_for(lambda: WebhookEvent.select().count() >= events, timeout=600, interval=0.2, what="the drain")
        return time.perf_counter() - start
    finally:
        for consumer in consumers:
            consumer.stop()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--events", type=int, default=10000)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="bench-partitions-")
    cluster = RedisCluster().start()
    results = {}
    try:
        for partitions in (1, 4):
            env = service_env(
                cluster.url,
                f"sqlite:///{tmp}/intake.db",
                STREAM_PARTITIONS=str(partitions),
                PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            migrate(open_database(f"sqlite:///{tmp}/intake.db"))
            settings = Settings(redis_url=cluster.url, stream_partitions=partitions)
            figures = intake(env, tmp, args.seconds)
            seconds = drain(env, settings, tmp, args.events)
            results[partitions] = {"intake": figures["rps"], "p99": figures["p99_ms"], "drain": args.events / seconds}
            print(
                f"{partitions} partition(s): intake {figures['rps']:.0f} req/s (p99 {figures['p99_ms']:.1f} ms, "
                f"non-2xx {figures['non_2xx']}), drain {args.events / seconds:.0f} events/s",
                flush=True,
            )
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)
    one = results[1]
    print(f"\n{'partitions':10} {'intake/s':>9} {'x 1':>5} {'p99 ms':>7} {'drain/s':>8} {'x 1':>5}")
    for partitions, r in results.items():
        print(
            f"{partitions:<10} {r['intake']:9.0f} {r['intake'] / one['intake']:5.2f} {r['p99']:7.1f} "
            f"{r['drain']:8.0f} {r['drain'] / one['drain']:5.2f}"
        )


if __name__ == "__main__":
    main()
