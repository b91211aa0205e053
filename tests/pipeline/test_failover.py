"""Replica-acknowledged intake through failovers, on real servers: a receiver and two consumers on a Redis Cluster of
three primaries and three replicas (and on Sentinel), REDIS_MIN_REPLICAS=1, signed webhooks sent all along. During
the traffic a replica takes over by CLUSTER FAILOVER, then a primary is SIGKILLed (and later restarted, to be a
replica again). Every event answered 200 must be applied exactly once; an event answered 503 is sent again, as Stripe
would, until it gets its 200. The figures of each run are printed (pytest -s shows them)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest

from billing.config import Settings
from harness import Process, RedisCluster, RedisSentinel, service_env, start_receiver, wait_for
from models.db import open_database
from models.tables import AuditLog, Subscription, WebhookEvent
from receiver.sample_events import build_event
from tests.stripe_helpers import sign

EVENTS = 600
PARTITIONS = 4


def post(base: str, event: dict) -> int:
    body = json.dumps(event).encode()
    request = urllib.request.Request(f"{base}/webhooks/stripe", data=body, headers=sign(body), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # the receiver did not answer at all: Stripe retries that too
        return 0


class Stripe:
    """Sends every event once, in order, in a thread of its own; keeps each answer; then, as Stripe does, sends
    again the events that did not get a 200 until they do."""

    def __init__(self, base: str, events: list[dict]):
        self.base = base
        self.events = events
        self.answers: dict[str, list[int]] = {event["id"]: [] for event in events}
        self.sent = 0
        self.thread = threading.Thread(target=self._send_all, daemon=True)

    def _send_all(self) -> None:
        for event in self.events:
            self.answers[event["id"]].append(post(self.base, event))
            self.sent += 1

    def retry_until_all_ok(self) -> None:
        def all_ok() -> bool:
            for event in self.events:
                if 200 not in self.answers[event["id"]]:
                    self.answers[event["id"]].append(post(self.base, event))
            return all(200 in answers for answers in self.answers.values())

        wait_for(all_ok, timeout=120, interval=0.5, what="every event answered 200 at last")

    def figures(self) -> Counter:
        first = Counter(answers[0] for answers in self.answers.values())
        every = Counter(code for answers in self.answers.values() for code in answers)
        return Counter(
            {
                "events": len(self.events),
                "first 200": first[200],
                "first 503": first[503],
                "503 in all": every[503],
                "no answer": every[0],
                "sends": sum(every.values()),
            }
        )


def run_pipeline(redis_url: str, tmp_path, during) -> Counter:
    """The pipeline on `redis_url` under traffic; `during(stripe)` does the damage while the events are sent.
    Returns the figures; asserts every event answered 200 is applied exactly once."""
    database_url = f"sqlite:///{tmp_path}/billing.db"
    env = service_env(
        redis_url, database_url, REDIS_MIN_REPLICAS="1", REDIS_WAIT_MS="1000", STREAM_PARTITIONS=str(PARTITIONS)
    )
    Process(["models", "migrate"], env, str(tmp_path)).wait()
    receiver, base = start_receiver(env, str(tmp_path))
    consumers = [
        Process(["consumer", "run", "--name", name, "--block-ms", "200"], env, str(tmp_path)) for name in ("c1", "c2")
    ]
    events = [
        build_event("checkout.session.completed", f"fo{n}", tier="basic", created=1_700_000_000 + n)
        for n in range(EVENTS)
    ]
    stripe = Stripe(base, events)
    try:
        stripe.thread.start()
        during(stripe)
        stripe.thread.join(timeout=300)
        stripe.retry_until_all_ok()
        db = open_database(database_url)
        wait_for(
            lambda: WebhookEvent.select().count() >= EVENTS,
            timeout=120,
            what=f"every event applied: {consumers[0].output()[-1500:]}",
        )
        acknowledged = {event_id for event_id, answers in stripe.answers.items() if 200 in answers}
        applied = Counter(row.stripe_event_id for row in WebhookEvent.select())
        created = Counter(
            row.community_id for row in AuditLog.select().where(AuditLog.event_type == "subscription_created")
        )
        figures = stripe.figures()
        figures["lost"] = len(acknowledged - set(applied))
        figures["doubled"] = sum(1 for count in created.values() if count > 1) + sum(
            1 for count in applied.values() if count > 1
        )
        assert figures["lost"] == 0 and figures["doubled"] == 0, figures
        assert Subscription.select().count() == EVENTS
        assert set(created) == {f"fo{n}" for n in range(EVENTS)}
        db.close()
    finally:
        for process in consumers:
            process.stop()
        receiver.stop()
    print(f"\n{redis_url.split('://')[0]}: {dict(figures)}")
    return figures


@pytest.mark.timeout(600)
def test_a_cluster_failover_and_a_killed_primary_lose_no_acknowledged_event(tmp_path):
    cluster = RedisCluster().start()
    keys = Settings(redis_url=cluster.url, stream_partitions=PARTITIONS).keys

    def during(stripe: Stripe) -> None:
        wait_for(lambda: stripe.sent >= EVENTS // 4, timeout=120, what="a quarter of the events sent")
        first = cluster.primary_of_key(keys.partition(0).stream)
        cluster.failover(cluster.replica_of(first))  # a manual failover: the replica takes over, nothing lost
        wait_for(lambda: stripe.sent >= EVENTS // 2, timeout=120, what="half of the events sent")
        victim = cluster.primary_of_key(keys.partition(1).stream)
        cluster.kill(victim)  # SIGKILL: its replica takes over, with every write a WAIT confirmed
        wait_for(lambda: stripe.sent >= 3 * EVENTS // 4, timeout=120, what="three quarters of the events sent")
        victim.start()  # back as a replica of the new primary, so WAIT 1 can succeed on those slots again
        cluster.wait_ok()

    try:
        figures = run_pipeline(cluster.url, tmp_path, during)
    finally:
        cluster.close()
    assert figures["first 200"] > 0


@pytest.mark.timeout(600)
def test_a_sentinel_failover_loses_no_acknowledged_event(tmp_path):
    sentinel = RedisSentinel().start()

    def during(stripe: Stripe) -> None:
        wait_for(lambda: stripe.sent >= EVENTS // 3, timeout=120, what="a third of the events sent")
        old = sentinel.primary
        sentinel.kill_primary()  # SIGKILL the primary; the Sentinels promote the replica
        wait_for(lambda: stripe.sent >= 2 * EVENTS // 3, timeout=120, what="two thirds of the events sent")
        old.start()  # the Sentinels make it a replica of the new primary

    try:
        figures = run_pipeline(sentinel.url, tmp_path, during)
    finally:
        sentinel.close()
    assert figures["first 200"] > 0
