"""End-to-end latency for bench/consumer.py: signed events POSTed at a steady rate, open loop (each sent at its
scheduled time whatever the answers before it; a few keep-alive connections so the sender keeps the schedule),
and per event the time from its POST to the moment its webhook_events row is seen committed. processed_at holds
whole seconds only, so a thread polls the table (every 2 ms) for new rows and stamps them.
The baseline: the same sender against the bare Flask app (bench/apps.py) under the receiver's gunicorn
settings, request round trip."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import sqlite3
import threading
import time

import redis

from bench.consumer_workload import GROUP, STREAM_KEY, Queued, events, fresh_redis, prepare_database
from bench.servers import serve_app
from harness import SECRET, Process, service_env, start_receiver, wait_for
from receiver.signing import signature_header

PATH = "/webhooks/stripe"


def run_e2e(rate: float, seconds: float, connections: int, log_level: str, tmp: str, appendonly: bool = True) -> dict:
    """Latencies in seconds: the bare app's round trips ("bare"); with ours, the receiver's round trips
    ("receiver"), send to commit ("e2e"), send to XADD ("to_queue") and XADD to commit ("to_commit").
    Each server gets one second of the same traffic first, left out."""
    warm = int(rate)
    queued = events(warm + int(rate * seconds), prefix="e2e")
    db_path = os.path.join(tmp, "e2e.db")
    prepare_database(f"sqlite:///{db_path}")
    with fresh_redis(appendonly=appendonly) as redis_server:
        env = service_env(redis_server.url, f"sqlite:///{db_path}", LOG_LEVEL=log_level)
        bare = _bare_round_trips(queued[:warm], queued[warm:], rate, connections, env, tmp)
        figures = _ours(queued[:warm], queued[warm:], rate, connections, env, tmp, db_path, redis_server.client())
    return {"bare": bare, **figures}


def _bare_round_trips(
    warm: list[Queued], measured: list[Queued], rate: float, connections: int, env: dict, tmp: str
) -> list[float]:
    proc, base = start_bare(env, tmp)
    try:
        send_open_loop(base, warm, rate, connections)
        return [sent.round_trip for sent in send_open_loop(base, measured, rate, connections)]
    finally:
        proc.stop()


def _ours(
    warm: list[Queued],
    measured: list[Queued],
    rate: float,
    connections: int,
    env: dict,
    tmp: str,
    db_path: str,
    client: redis.Redis,
) -> dict:
    consumer = Process(["consumer", "run", "--name", "e2e"], env, tmp)
    receiver, base = start_receiver(env, tmp, workers=2)
    watcher = CommitWatcher(db_path)
    watcher.start()
    try:
        wait_for(lambda: client.xinfo_consumers(STREAM_KEY, GROUP), timeout=60, what="the consumer in its group")
        commit_latencies(send_open_loop(base, warm, rate, connections), watcher)
        sent = send_open_loop(base, measured, rate, connections)
        latencies, missing = commit_latencies(sent, watcher)
        xadded = queued_at(client, STREAM_KEY)
    finally:
        watcher.stop()
        receiver.stop()
        consumer.stop()
    both = [s for s in sent if s.event_id in xadded and s.event_id in watcher.seen]
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        outcomes = dict(conn.execute("SELECT status, count(*) FROM webhook_events GROUP BY status").fetchall())
    return {
        "receiver": [s.round_trip for s in sent],
        "e2e": latencies,
        "missing": missing,
        "outcomes": outcomes,
        "failed": sum(s.status != 200 for s in sent),
        "slip": max(s.slip for s in sent),
        "to_queue": [xadded[s.event_id] - s.wall for s in both],
        "to_commit": [watcher.seen[s.event_id] - xadded[s.event_id] for s in both],
    }


@dataclasses.dataclass
class Sent:
    event_id: str
    wall: float  # time.time() just before the request went out
    round_trip: float  # seconds
    status: int
    slip: float  # how late against its schedule, seconds


def send_open_loop(base: str, queued: list[Queued], rate: float, connections: int) -> list[Sent]:
    """POST `queued` at `rate` per second, event i at start + i/rate, over `connections` keep-alive
    connections (connection k sends events k, k + connections, ...)."""
    start = time.perf_counter() + 0.1
    results: list[list[Sent]] = [[] for _ in range(connections)]
    threads = [
        threading.Thread(
            target=_sender,
            args=(base, queued[k::connections], start + k / rate, connections / rate, results[k]),
            daemon=True,
        )
        for k in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted((sent for part in results for sent in part), key=lambda sent: sent.wall)


def _sender(base: str, queued: list[Queued], first: float, step: float, out: list[Sent]) -> None:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    for n, (event_id, _, _, body) in enumerate(queued):
        due = first + n * step
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        headers = {"Content-Type": "application/json", "Stripe-Signature": signature_header(body, SECRET)}
        wall, began = time.time(), time.perf_counter()
        conn.request("POST", PATH, body, headers)
        response = conn.getresponse()
        response.read()
        out.append(Sent(event_id, wall, time.perf_counter() - began, response.status, began - due))
    conn.close()


class CommitWatcher(threading.Thread):
    """Stamps each new webhook_events row with time.time() when it is first seen committed."""

    def __init__(self, db_path: str, interval: float = 0.002):
        super().__init__(daemon=True)
        self.db_path, self.interval = db_path, interval
        self.seen: dict[str, float] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db_path, timeout=10)
        last = 0
        while not self._stop_event.is_set():
            rows = conn.execute(
                "SELECT id, stripe_event_id FROM webhook_events WHERE id > ? AND processed_at IS NOT NULL ORDER BY id",
                (last,),
            ).fetchall()
            now = time.time()
            for row_id, event_id in rows:
                self.seen.setdefault(event_id, now)
                last = row_id
            self._stop_event.wait(self.interval)
        conn.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def commit_latencies(sent: list[Sent], watcher: CommitWatcher, timeout: float = 60) -> tuple[list[float], int]:
    """Seconds from send to commit for every sent event, once all are seen (or `timeout`); and how many
    never were."""
    wanted = [s for s in sent if s.status == 200]
    try:
        wait_for(
            lambda: all(s.event_id in watcher.seen for s in wanted),
            timeout=timeout,
            interval=0.05,
            what="every sent event committed",
        )
    except AssertionError:
        pass
    latencies = [watcher.seen[s.event_id] - s.wall for s in wanted if s.event_id in watcher.seen]
    return latencies, len(sent) - len(latencies)


def queued_at(client: redis.Redis, stream_key: str) -> dict[str, float]:
    """When each event of the stream was XADDed (its entry id's milliseconds, Redis's clock: this machine's)."""
    out = {}
    for entry_id, fields in client.xrange(stream_key):
        out[fields[b"event_id"].decode()] = int(entry_id.split(b"-")[0]) / 1000
    return out


def start_bare(env: dict, tmp: str) -> tuple[Process, str]:
    """bench/apps.py's bare Flask app under gunicorn, the receiver's worker count, class and threads."""
    return serve_app("bare", env, tmp)


def percentile(values: list[float], q: float) -> float:
    """Nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
