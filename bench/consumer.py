"""Consumer against its baselines, on demand: `.venv/bin/python bench/consumer.py [--events 20000]
[--skip celery,e2e,postgres] [--postgres] [--rounds 1] [--out bench/consumer.png]`.

Every figure is a ratio to a baseline measured in the same run (the machine is shared and noisy):

1. Workload: N events in the current Stripe API shape (receiver.sample_events) over N/10 communities, each living
   a checkout, its first invoice, renewals, a failed payment and its recovery, a cancellation
   (bench/consumer_workload.py); queued on a fresh redis-server the way the receiver queues them (EventQueue).
2. The raw loop (bench/consumer_baselines.py): XREADGROUP 500, json.loads, three executemany in one sqlite3
   transaction, XACK. Events/s, CPU per event, RSS.
3. Ours: `python -m consumer run` (defaults: batch 500, LOG_LEVEL as deployed unless --log-level) on a fresh
   SQLite file. The consumer starts on the empty stream, is stopped (SIGSTOP) once it has joined the group, the
   events are queued, and it is timed from SIGCONT until the group has every entry read and acknowledged (it
   acks after its commit). CPU of its process from /proc; its VmRSS once drained.
4. Celery 5 (bench/consumer_celery.py): one task per event doing the raw loop's writes, Redis broker, prefork -c 2,
   acks_late, the tasks queued before the worker starts; timed from its first committed task until its SQLite
   holds every event.
5. PostgreSQL (on by default when 127.0.0.1:5432 answers; --postgres requires it): two consumers against one,
   a fresh schema each.
6. End to end (bench/consumer_e2e.py): receiver (2 workers) and one consumer on SQLite, Redis with appendfsync
   always (bin/run's; --appendfsync no-aof for none); signed events at --rate per second, open loop, for
   --seconds after one second of warm-up; latency = commit seen (webhook_events polled every 2 ms) - send.
   Baseline: the bare Flask app (bench/apps.py) under the same gunicorn settings, request round trip.

CPU figures are the measured process tree's only (not redis-server's, not PostgreSQL's).
Prints the table and writes a PNG (--out): throughput bars and the latency distributions."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter

import redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import consumer_report as report  # noqa: E402
from bench.consumer_e2e import run_e2e  # noqa: E402
from bench.consumer_workload import (  # noqa: E402
    GROUP,
    STREAM_KEY,
    Queued,
    busy_since,
    cpu_seconds,
    drained,
    enqueue,
    events,
    fresh_redis,
    machine_jiffies,
    poll,
    prepare_database,
    rss_mb,
)
from harness import REPO, Process, postgres_reachable, postgres_schema, service_env, wait_for  # noqa: E402
from models.db import open_database  # noqa: E402

PARTS = ("celery", "e2e", "postgres")


@dataclasses.dataclass
class Drain:
    """One process (tree) draining the queued events."""

    events: int
    seconds: float
    cpu_seconds: float
    rss_mb: float = float("nan")
    outcomes: dict | None = None
    machine_busy: float = float("nan")  # the whole machine's CPU use meanwhile, 0..1 over all cores

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.events * 1e6


# --- the raw loop -----------------------------------------------------------------------------------------


def run_raw(queued: list[Queued], tmp: str) -> Drain:
    with fresh_redis() as redis_server:
        client = redis_server.client()
        enqueue(client, queued)
        client.xgroup_create(STREAM_KEY, "raw", id="0")
        db_path = os.path.join(tmp, f"raw-{time.monotonic_ns()}.db")
        machine = machine_jiffies()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.consumer_baselines",
                redis_server.url,
                STREAM_KEY,
                "raw",
                db_path,
                str(len(queued)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode:
            raise RuntimeError(f"the raw loop failed: {out.stderr[-2000:]}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
    # the machine's share over the whole subprocess, start-up included: a rough figure
    return Drain(
        figures["events"],
        figures["seconds"],
        figures["cpu_seconds"],
        figures["rss_mb"],
        machine_busy=busy_since(machine),
    )


# --- ours --------------------------------------------------------------------------------------------------


def run_ours(queued: list[Queued], database_url: str, tmp: str, log_level: str, consumers: int = 1) -> Drain:
    prepare_database(database_url)
    with fresh_redis() as redis_server:
        client = redis_server.client()
        env = service_env(redis_server.url, database_url, LOG_LEVEL=log_level)
        extra = os.environ.get("BENCH_CONSUMER_ARGS", "").split()  # e.g. "--batch 500"
        procs = [Process(["consumer", "run", "--name", f"bench-{k}", *extra], env, tmp) for k in range(consumers)]
        try:
            wait_for(
                lambda: len(client.xinfo_consumers(STREAM_KEY, GROUP)) == consumers,
                timeout=60,
                what=f"{consumers} consumer(s) in the group: {procs[0].output()[-1500:]}",
            )
            for proc in procs:
                proc.signal(signal.SIGSTOP)
            enqueue(client, queued)
            cpu_before, machine = sum(cpu_seconds(proc.popen.pid) for proc in procs), machine_jiffies()
            start = time.perf_counter()
            for proc in procs:
                proc.signal(signal.SIGCONT)
            end = poll(lambda: drained(client, len(queued)), timeout=1800, interval=0.01, what="all events applied")
            cpu, busy = sum(cpu_seconds(proc.popen.pid) for proc in procs) - cpu_before, busy_since(machine)
            rss = max(rss_mb(proc.popen.pid) for proc in procs)
        finally:
            for proc in procs:
                proc.signal(signal.SIGCONT)
                proc.stop()
    return Drain(len(queued), end - start, cpu, rss, outcomes(database_url), busy)


def outcomes(database_url: str) -> dict:
    from models.tables import WebhookEvent

    db = open_database(database_url)
    try:
        return dict(Counter(row.status for row in WebhookEvent.select(WebhookEvent.status)))
    finally:
        db.close()


# --- Celery ------------------------------------------------------------------------------------------------


def celery_missing() -> str | None:
    try:
        import celery  # noqa: F401
    except ImportError:
        return "celery is not installed (.venv/bin/pip install -c constraints.txt -e '.[bench]')"
    return None


def run_celery(queued: list[Queued], tmp: str, log_level: str) -> Drain:
    from bench.consumer_baselines import open_sqlite
    from bench.consumer_celery import QUEUE, send_all

    db_path = os.path.join(tmp, f"celery-{time.monotonic_ns()}.db")
    open_sqlite(db_path).close()  # the tables, so that they can be counted before the first task
    with fresh_redis() as redis_server:
        broker = redis_server.url.rsplit("/", 1)[0] + "/1"
        send_all(broker, [body for _, _, _, body in queued])
        broker_client = redis.Redis.from_url(broker)
        total = broker_client.llen(QUEUE)
        assert total == len(queued), f"{total} tasks queued of {len(queued)}"
        env = {**os.environ, "BENCH_CELERY_BROKER": broker, "BENCH_CELERY_DB": db_path, "PYTHONPATH": REPO.as_posix()}
        worker = Process(
            [
                "celery",
                "-A",
                "bench.consumer_celery",
                "worker",
                "--pool",
                "prefork",
                "-c",
                "2",
                "-Q",
                QUEUE,
                "--loglevel",
                log_level,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-n",
                "bench@%h",
            ],
            env,
            tmp,
        )
        try:
            # From its first committed task: its start-up (at times a second between the first fetch and the
            # first task run) is left out, in Celery's favour.
            poll(
                lambda: _count(db_path) > 0,
                timeout=120,
                interval=0.002,
                what=f"Celery's first task: {worker.output()[-1500:]}",
            )
            done_before, start, cpu_before = _count(db_path), time.perf_counter(), cpu_seconds(worker.popen.pid)
            machine = machine_jiffies()
            end = poll(lambda: _count(db_path) >= total, timeout=3600, interval=0.02, what="Celery drained")
            cpu, busy = cpu_seconds(worker.popen.pid) - cpu_before, busy_since(machine)
        finally:
            worker.stop()
    return Drain(total - done_before, end - start, cpu, machine_busy=busy)


def _count(db_path: str) -> int:
    with contextlib.closing(sqlite3.connect(db_path, timeout=5)) as conn:
        return conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0]


# --- the run -----------------------------------------------------------------------------------------------


def best(current: Drain | None, new: Drain) -> Drain:
    return new if current is None or new.rate > current.rate else current


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1, help="raw loop, ours, Celery this many times: the best")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {','.join(PARTS)}")
    parser.add_argument("--postgres", action="store_true", help="fail rather than skip when PostgreSQL is down")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        help="LOG_LEVEL of our processes, --loglevel of Celery's [INFO, as deployed]",
    )
    parser.add_argument("--rate", type=float, default=200, help="end to end: events sent per second")
    parser.add_argument("--seconds", type=float, default=10, help="end to end: how long, after 1 s of warm-up")
    parser.add_argument("--connections", type=int, default=8, help="end to end: the sender's connections")
    parser.add_argument(
        "--appendfsync",
        default="always",
        choices=["always", "no-aof"],
        help="end to end: Redis's persistence, bin/run's (always) or none",
    )
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "consumer.png"))
    args = parser.parse_args()
    args.skip = {part for part in args.skip.split(",") if part}
    if args.skip - set(PARTS):
        parser.error(f"--skip takes {', '.join(PARTS)}")
    return args


def main() -> None:
    args = parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-consumer-")
    try:
        run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nchart: {args.out}")


def run_all(args: argparse.Namespace, tmp: str) -> None:
    notes: list[str] = []
    print(f"building {args.events} events ...", flush=True)
    queued = events(args.events)
    with_celery = "celery" not in args.skip and not celery_missing()
    if "celery" not in args.skip and not with_celery:
        notes.append(f"Celery row skipped: {celery_missing()}")
    results = drain_rounds(queued, args, tmp, with_celery)
    if "postgres" not in args.skip:
        results.update(drain_postgres(queued, args, tmp, notes))
    if "e2e" not in args.skip:
        print("end to end ...", flush=True)
        results["e2e"] = run_e2e(
            args.rate, args.seconds, args.connections, args.log_level, tmp, appendonly=args.appendfsync == "always"
        )
    report.print_table(results, args, notes)
    report.plot(results, args.out)


def drain_rounds(queued: list[Queued], args: argparse.Namespace, tmp: str, with_celery: bool) -> dict[str, Drain]:
    """The raw loop, ours on SQLite and Celery, one after the other, --rounds times: the best of each."""
    results: dict[str, Drain] = {}
    for n in range(1, args.rounds + 1):
        runs = [
            ("raw", "raw loop", run_raw, (queued, tmp)),
            ("ours", "ours, SQLite", run_ours, (queued, f"sqlite:///{tmp}/ours-{n}.db", tmp, args.log_level)),
        ]
        if with_celery:
            runs.append(("celery", "Celery", run_celery, (queued, tmp, args.log_level)))
        for key, title, run, run_args in runs:
            results[key] = best(results.get(key), step(f"round {n}: {title}", run, *run_args))
    return results


def drain_postgres(queued: list[Queued], args: argparse.Namespace, tmp: str, notes: list[str]) -> dict[str, Drain]:
    """Ours on PostgreSQL with one consumer, then two, each on a fresh schema."""
    if not postgres_reachable():
        if args.postgres:
            sys.exit("PostgreSQL does not answer at 127.0.0.1:5432")
        notes.append("PostgreSQL rows skipped: nothing answers at 127.0.0.1:5432")
        return {}
    results = {}
    for key, consumers in (("pg_one", 1), ("pg_two", 2)):
        with postgres_schema() as url:
            results[key] = step(
                f"ours, PostgreSQL, {consumers} consumer(s)", run_ours, queued, url, tmp, args.log_level, consumers
            )
    return results


def step(title: str, run, *args) -> Drain:
    print(f"{title} ...", end=" ", flush=True)
    drain = run(*args)
    extra = f", outcomes {drain.outcomes}" if drain.outcomes else ""
    print(
        f"{drain.rate:,.0f} events/s, {drain.cpu_us:,.0f} µs CPU/event, machine {drain.machine_busy:.0%} busy{extra}",
        flush=True,
    )
    return drain


if __name__ == "__main__":
    main()
