"""Nothing lost, nothing doubled, at scale and under many faults at once, checked by an independent oracle.

Thousands of signed events go through a real receiver (gunicorn) and real consumers, delivered out of order
within each community's window and 10 % of them twice (half of those concurrently), while consumers are
SIGKILLed about once a second and restarted (some under a new name, so only reclaiming finishes their work),
Redis (append-only, fsync always) is SIGKILLed and restarted, and, on PostgreSQL, the database is stopped for a
few seconds. A delivery that is not answered 200 is retried, as Stripe does. At the end every community's
subscription must equal the oracle's, every event must have exactly the effects of one application, nothing is
pending, and only the poison events are dead letters. CHAOS_COMMUNITIES scales the run (default 1000 stories of
about 10 events: 10,000 events)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import random
import signal
import threading
import time
import urllib.parse

import pytest

from harness import (
    SECRET,
    PostgresServer,
    Process,
    RedisServer,
    service_env,
    start_receiver,
    wait_for,
)
from models.db import database_proxy, open_database
from models.migrations import migrate
from models.tables import AuditLog, Subscription, WebhookEvent
from receiver.signing import signature_header
from tests.chaos import oracle
from tests.chaos.stories import PRICE_TIERS, Run, build_run
from tests.database_helpers import DATABASES

COMMUNITIES = int(os.environ.get("CHAOS_COMMUNITIES", "1000"))
EVENTS_PER_STORY = 10
DUPLICATES = 0.10
STREAM, GROUP, DEAD = "stripe:events", "billing", "stripe:events:dead"
CONSUMERS = 2
MAX_DELIVERIES = 3


@dataclasses.dataclass
class Figures:
    events: int = 0
    deliveries: int = 0
    duplicates: int = 0
    retried: int = 0  # deliveries answered other than 200 (Redis down) and sent again
    kills: int = 0
    renamed: int = 0
    redis_restarts: int = 0
    db_outage_seconds: float = 0.0
    lost: int = 0
    doubled: int = 0
    wall_seconds: float = 0.0


@pytest.fixture(params=DATABASES)
def database(request, tmp_path):
    """A database of the run's own: a throwaway PostgreSQL server (so it can be stopped), or a SQLite file."""
    if request.param == "sqlite":
        yield None, f"sqlite:///{tmp_path}/chaos.db"
        return
    pg = PostgresServer().start()
    try:
        yield pg, pg.url
    finally:
        pg.close()


def test_nothing_lost_nothing_doubled_under_chaos(database, tmp_path):
    pg, database_url = database
    figures, started = Figures(), time.monotonic()
    rng = random.Random(20261129)
    run = build_run(seed=rng.randrange(1 << 30), communities=COMMUNITIES, events_per_story=EVENTS_PER_STORY)
    deliveries = _schedule(run, rng)
    figures.events, figures.deliveries = len(run.events), sum(len(bodies) for bodies in deliveries)
    figures.duplicates = figures.deliveries - figures.events

    db = open_database(database_url)
    migrate(db)
    db.close()
    redis = RedisServer(appendonly=True).start()
    env = service_env(
        redis.url,
        database_url,
        CLAIM_IDLE_MS="2000",
        MAX_DELIVERIES=str(MAX_DELIVERIES),
        STRIPE_PRICE_TIERS=",".join(f"{p}={t}" for p, t in PRICE_TIERS.items()),
        LOG_LEVEL="WARNING",
    )
    receiver, base = start_receiver(env, str(tmp_path))
    fleet = Fleet(env, str(tmp_path), rng, figures)
    try:
        sender = Sender(base, figures, total=sum(len(bodies) for bodies in deliveries))
        chaos = Chaos(sender, redis, pg, fleet, figures, rng)
        chaos.start()
        sender.send_all(deliveries)
        wait_for(lambda: chaos.scheduled_done, timeout=60, what="Redis and database faults to have happened")
        chaos.stopping.set()
        chaos.join(timeout=60)
        fleet.steady()
        expected_ids = {e["id"] for e in run.events}
        wait_for(
            lambda: _settled(redis, expected_ids),
            timeout=300,
            interval=0.5,
            what=f"every event applied and acknowledged: {fleet.tail()}",
        )
    finally:
        fleet.stop()
        receiver.stop()

    db = open_database(database_url)
    try:
        _check(run, redis, figures)
    finally:
        db.close()
        database_proxy.initialize(None)
        redis.close()
        figures.wall_seconds = round(time.monotonic() - started, 1)
        print(f"\nchaos figures ({'postgresql' if pg else 'sqlite'}): {dataclasses.asdict(figures)}")
    assert (figures.lost, figures.doubled) == (0, 0)


def _schedule(run: Run, rng: random.Random) -> list[list[bytes]]:
    """Deliveries in the order Stripe would make them: roughly by `created`, each event up to a few story
    steps late (old updates arriving after newer ones). A delivery is one body, or two copies of one body
    posted at once; 10 % of events are delivered twice."""
    timed = []
    for event in run.events:
        body = json.dumps(event).encode()
        timed.append((event["created"] + rng.uniform(0, 3000), [body]))
        if rng.random() < DUPLICATES:
            if rng.random() < 0.5:
                timed[-1] = (timed[-1][0], [body, body])  # concurrently
            else:
                timed.append((event["created"] + rng.uniform(0, 6000), [body]))  # later
    timed.sort(key=lambda pair: pair[0])
    return [bodies for _, bodies in timed]


class Sender:
    """Posts deliveries from a few threads, each with its own keep-alive connection, until answered 200."""

    def __init__(self, base: str, figures: Figures, total: int, threads: int = 6):
        self.url = urllib.parse.urlsplit(base)
        self.figures = figures
        self.threads = threads
        self.total = total
        self.done = 0
        self._local = threading.local()
        self._lock = threading.Lock()

    def send_all(self, deliveries: list[list[bytes]]) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.threads * 2) as pool:
            window = []
            for bodies in deliveries:
                window.extend(pool.submit(self._post, body) for body in bodies)
                if len(window) >= self.threads:
                    for future in window:
                        future.result()
                    window = []
            for future in window:
                future.result()

    def _post(self, body: bytes) -> None:
        while True:
            try:
                conn = self._connection()
                conn.request(
                    "POST",
                    "/webhooks/stripe",
                    body,
                    {"Stripe-Signature": signature_header(body, SECRET), "Content-Type": "application/json"},
                )
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    with self._lock:
                        self.done += 1
                    return
                assert response.status == 503, response.status  # only Redis being down may refuse an event
            except (OSError, http.client.HTTPException):
                self._local.conn = None
            with self._lock:
                self.figures.retried += 1
            time.sleep(0.05)

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "conn", None) is None:
            self._local.conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=10)
        return self._local.conn


class Fleet:
    """The consumers: CONSUMERS of them at all times, any of which may be SIGKILLed and replaced."""

    def __init__(self, env: dict, log_dir: str, rng: random.Random, figures: Figures):
        self.env, self.log_dir, self.rng, self.figures = env, log_dir, rng, figures
        self.generation = 0
        self.running = [self._start(f"chaos-{n}") for n in range(CONSUMERS)]
        self.retired: list[Process] = []

    def _start(self, name: str) -> Process:
        return Process(
            ["consumer", "run", "--name", name, "--block-ms", "100", "--batch", "50"], self.env, self.log_dir
        )

    def kill_one(self) -> None:
        index = self.rng.randrange(len(self.running))
        victim = self.running[index]
        name = victim.popen.args[victim.popen.args.index("--name") + 1]
        victim.signal(signal.SIGKILL)
        victim.wait()
        self.retired.append(victim)
        self.figures.kills += 1
        if self.rng.random() < 0.3:  # a new name: only reclaiming can finish what the old one held
            self.generation += 1
            name = f"chaos-new-{self.generation}"
            self.figures.renamed += 1
        self.running[index] = self._start(name)

    def steady(self) -> None:
        for proc in self.running:
            assert proc.popen.poll() is None, proc.output()[-3000:]

    def tail(self) -> str:
        return " | ".join(proc.output()[-600:] for proc in self.running)

    def stop(self) -> None:
        for proc in self.running:
            proc.stop()
        for proc in self.retired:
            proc.log.close()


class Chaos(threading.Thread):
    """While the events flow: a consumer killed about once a second; Redis killed once a third of the way
    through the deliveries, the database stopped once at two thirds (PostgreSQL). Runs until told to stop,
    which the test does once the deliveries are done and every scheduled fault has happened."""

    def __init__(
        self,
        sender: Sender,
        redis: RedisServer,
        pg: PostgresServer | None,
        fleet: Fleet,
        figures: Figures,
        rng: random.Random,
    ):
        super().__init__(daemon=True)
        self.sender, self.redis, self.pg, self.fleet, self.figures, self.rng = sender, redis, pg, fleet, figures, rng
        self.redis_done, self.db_done = False, pg is None
        self.stopping = threading.Event()

    @property
    def scheduled_done(self) -> bool:
        return self.redis_done and self.db_done

    def run(self) -> None:
        while not self.stopping.wait(self.rng.uniform(0.6, 1.4)):
            self.fleet.kill_one()
            progress = self.sender.done / max(1, self.sender.total)
            if not self.redis_done and progress > 0.33:
                self.redis.kill()
                time.sleep(0.5)
                self.redis.start()
                self.figures.redis_restarts += 1
                self.redis_done = True
            if not self.db_done and progress > 0.66:
                down = time.monotonic()
                self.pg.stop()
                time.sleep(3)
                self.pg.start()
                self.figures.db_outage_seconds = round(time.monotonic() - down, 1)
                self.db_done = True


def _settled(redis: RedisServer, expected_ids: set[str]) -> bool:
    client = redis.client()
    try:
        if client.xpending(STREAM, GROUP)["pending"]:
            return False
        group = next(g for g in client.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
        if group.get("lag"):
            return False
        db = database_proxy.obj
        try:
            done = (
                WebhookEvent.select().where(WebhookEvent.status.in_(["processed", "stale", "ignored", "dead"])).count()
            )
        finally:
            db.close()
        return done >= len(expected_ids)
    finally:
        client.close()


def _check(run: Run, redis: RedisServer, figures: Figures) -> None:
    rows = {r.stripe_event_id: r.status for r in WebhookEvent.select(WebhookEvent.stripe_event_id, WebhookEvent.status)}
    audits: dict[str, int] = {}
    for row in AuditLog.select(AuditLog.event_data):
        event_id = json.loads(row.event_data).get("stripe_event_id")
        audits[event_id] = audits.get(event_id, 0) + 1

    story_events = [e for story in run.stories for e in story.events]
    for event in story_events:
        status, written = rows.get(event["id"]), audits.get(event["id"], 0)
        want = oracle.audits_of(event) if status == "processed" else 0
        if status not in ("processed", "stale") or (status == "processed" and written < want):
            figures.lost += 1
        elif written > want:
            figures.doubled += 1
    assert {rows.get(e["id"]) for e in run.unknown} == {"ignored"}
    assert {rows.get(e["id"]) for e in run.poison} == {"dead"}

    mismatched = []
    for story in run.stories:
        want = oracle.expected(story)
        sub = Subscription.get_or_none(Subscription.community_id == story.community_id)
        got = (
            None
            if sub is None
            else oracle.Expected(
                sub.community_id,
                sub.stripe_subscription_id,
                sub.tier,
                sub.status,
                sub.grace_until,
                sub.current_period_start,
                sub.current_period_end,
            )
        )
        if got != want:
            mismatched.append((story.kind, want, got))
    assert not mismatched, f"{len(mismatched)} communities differ from the oracle, e.g. {mismatched[:3]}"

    client = redis.client()
    dead_ids = {fields[b"event_id"].decode() for _, fields in client.xrange(DEAD)}
    assert dead_ids == {e["id"] for e in run.poison}
    assert client.xpending(STREAM, GROUP)["pending"] == 0
