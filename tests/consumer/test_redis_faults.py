"""Redis error replies the consumer must live through, on real redis-servers: a Redis full at maxmemory with
noeviction (a consumer already running keeps acknowledging and trimming, one started then comes up), a failover
(UNBLOCKED, READONLY, then primary again), MASTERDOWN and an unexpected WRONGTYPE; and the batch size growing
back after missed deadlines."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
import time

import pytest
import redis
from prometheus_client import REGISTRY

from billing.config import Settings
from billing.event_queue import EventQueue
from billing.redis_io import connect_redis
from consumer.worker import Worker
from harness import (
    SECRET,
    Process,
    RedisServer,
    free_port,
    service_env,
    wait_for,
)
from models.tables import WebhookEvent
from receiver.sample_events import build_event
from tests.consumer_metrics_helpers import scrape, value
from tests.redis_memory_helpers import fill_until_refused, used_memory

STREAM, GROUP = "stripe:events", "billing"
KEYS = Settings().keys
ERRORS = "billing_redis_errors_total"


@pytest.fixture
def servers():
    """Fresh redis-servers, as many as the test asks for; all closed afterwards."""
    started = []

    def start() -> RedisServer:
        started.append(RedisServer().start())
        return started[-1]

    yield start
    for server in started:
        server.close()


def checkout(community: str, created: int | None = None) -> dict:
    return build_event(
        "checkout.session.completed",
        community,
        tier="premium",
        customer_id=f"cus_{community}",
        subscription_id=f"sub_{community}",
        created=created or int(time.time()),
    )


def filler(n: int) -> dict:
    """An event type we do not handle (recorded `ignored`) with a body of 32 KiB: a stream that fills Redis."""
    return {
        **build_event("invoice.paid", f"fill{n}"),
        "id": f"evt_fill_{n:05d}",
        "type": "customer.created",
        "padding": "x" * 32 * 1024,
    }


def enqueue(client: redis.Redis, event: dict) -> str:
    return EventQueue(client, KEYS, 3600).enqueue(
        event["id"], event["type"], event["created"], json.dumps(event).encode()
    )


def fill_stream_until_refused(client: redis.Redis, headroom: int = 2 * 1024 * 1024) -> list[dict]:
    """As Redis fills up in real life: events keep coming while none is acknowledged, until the receiver's
    enqueue is refused (the 503 Stripe gets). maxmemory is then pinned a little under what Redis uses."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used_memory(client) + headroom)
    queued = []
    for n in range(10_000):
        try:
            enqueue(client, filler(n))
        except redis.ResponseError as exc:
            assert "maxmemory" in str(exc), exc
            client.config_set("maxmemory", used_memory(client) - 256 * 1024)
            return queued
        queued.append(filler(n))
    raise AssertionError("Redis never refused an event")


def cache_answers(client: redis.Redis, *communities: str) -> None:
    for community in communities:
        client.set(
            KEYS.entitlement_answer(community), json.dumps({"community_id": community, "tier": "starter"}), ex=300
        )


def pending(client: redis.Redis) -> int:
    return client.xpending(STREAM, GROUP)["pending"]


def rows(*events: dict) -> dict[str, str]:
    found = WebhookEvent.select().where(WebhookEvent.stripe_event_id.in_([e["id"] for e in events]))
    return {row.stripe_event_id: row.status for row in found}


def applied(*events: dict) -> bool:
    return len(rows(*events)) == len(events)


def consumers(client: redis.Redis) -> list[str]:
    return [c["name"].decode() for c in client.xinfo_consumers(STREAM, GROUP)]


def blocked_in_xreadgroup(client: redis.Redis) -> bool:
    return any(c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "") for c in client.client_list())


def start_consumer(env: dict, tmp_path, name: str, block_ms: int = 200) -> Process:
    return Process(
        ["consumer", "run", "--name", name, "--block-ms", str(block_ms), "--batch", "20"], env, str(tmp_path)
    )


def errors_counted(port: int) -> float:
    return value(wait_for(lambda: scrape(port), what="/metrics"), ERRORS) or 0.0


# --- a full Redis ------------------------------------------------------------------------------------------------


def test_a_running_consumer_keeps_acknowledging_and_trimming_when_redis_is_full(servers, sqlite_url, tmp_path):
    server = servers()
    r = server.client()
    port = free_port()
    # CLAIM_IDLE_MS long enough that nothing is reclaimed while the consumer is stopped below; a tick of 5 s.
    env = service_env(
        server.url, sqlite_url, CLAIM_IDLE_MS="20000", STREAM_RETENTION_SECONDS="1", METRICS_PORT=str(port)
    )
    worker = start_consumer(env, tmp_path, "a")
    try:
        wait_for(lambda: blocked_in_xreadgroup(r), what=f"the consumer waiting for entries: {worker.output()[-2000:]}")
        worker.signal(signal.SIGSTOP)  # holds still while Redis fills up
        changes = [checkout(f"full{n}") for n in range(3)]
        cache_answers(r, *[f"full{n}" for n in range(3)])
        for event in changes:
            enqueue(r, event)
        fillers = fill_stream_until_refused(r)
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            enqueue(r, checkout("refused"))
        worker.signal(signal.SIGCONT)

        wait_for(
            lambda: applied(*changes, *fillers) and pending(r) == 0,
            timeout=60,
            what=f"every entry applied and acknowledged: {worker.output()[-3000:]}",
        )
        assert worker.popen.poll() is None, worker.output()
        # The changed communities' cached answers were dropped all the same (DEL is never refused).
        assert r.exists(*[KEYS.entitlement_answer(f"full{n}") for n in range(3)]) == 0
        # The first batch was settled without its dedupe mark (a SET): the mark says `queued`, not `processed`.
        assert r.get(KEYS.seen(changes[0]["id"])) == b"queued"
        wait_for(lambda: r.xlen(STREAM) == 0, timeout=30, what="the acknowledged entries to be trimmed")
        assert errors_counted(port) >= 1

        r.config_set("maxmemory", 0)
        later = checkout("after")
        enqueue(r, later)
        wait_for(
            lambda: r.get(KEYS.seen(later["id"])) == b"processed" and pending(r) == 0,
            what="a new event applied once memory is freed",
        )
        assert rows(later) == {later["id"]: "processed"}
    finally:
        worker.signal(signal.SIGCONT)
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()
    assert "Traceback" not in worker.output()


def test_a_consumer_started_while_redis_is_full_comes_up_and_acknowledges(servers, sqlite_url, tmp_path):
    server = servers()
    r = server.client()
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)  # consumers ran before
    change = checkout("started")
    enqueue(r, change)
    cache_answers(r, "started")
    fill_until_refused(r)
    port = free_port()
    env = service_env(server.url, sqlite_url, CLAIM_IDLE_MS="4000", METRICS_PORT=str(port))
    worker = start_consumer(env, tmp_path, "b")
    try:
        wait_for(
            lambda: applied(change) and pending(r) == 0 and "b" in consumers(r),
            what=f"the entry applied and acknowledged: {worker.output()[-3000:]}",
        )
        assert worker.popen.poll() is None, worker.output()
        assert r.exists(KEYS.entitlement_answer("started")) == 0
        assert errors_counted(port) >= 1  # the settlement refused for memory

        r.config_set("maxmemory", 0)
        later = checkout("later")
        enqueue(r, later)
        wait_for(
            lambda: r.get(KEYS.seen(later["id"])) == b"processed" and pending(r) == 0,
            what="a new event applied once memory is freed",
        )
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()
    assert "Traceback" not in worker.output()


# --- failover ----------------------------------------------------------------------------------------------------


def replicaof(client: redis.Redis, primary: RedisServer | None) -> None:
    if primary is None:
        client.execute_command("REPLICAOF", "NO", "ONE")
    else:
        client.execute_command("REPLICAOF", "127.0.0.1", primary.port)


def in_sync(replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return info["role"] == "slave" and info["master_link_status"] == "up"


def test_a_failover_and_back_stops_no_consumer(servers, sqlite_url, tmp_path):
    a, b = servers(), servers()
    ra, rb = a.client(), b.client()
    replicaof(rb, a)  # b follows a, as a replica ready to take over
    wait_for(lambda: in_sync(rb), what="b in sync with a")
    port = free_port()
    env = service_env(a.url, sqlite_url, CLAIM_IDLE_MS="20000", METRICS_PORT=str(port))
    worker = start_consumer(env, tmp_path, "f1", block_ms=5000)
    try:
        before = checkout("before")
        enqueue(ra, before)
        wait_for(lambda: applied(before) and pending(ra) == 0, what=f"the first event: {worker.output()[-2000:]}")
        wait_for(lambda: blocked_in_xreadgroup(ra), what="the consumer blocked in XREADGROUP")

        # Failover: b becomes the primary, a (the consumer's Redis) its replica.
        replicaof(rb, None)
        replicaof(ra, b)
        wait_for(lambda: "UNBLOCKED" in worker.output(), what=f"UNBLOCKED met: {worker.output()[-2000:]}")
        wait_for(lambda: "READONLY" in worker.output(), what=f"READONLY met: {worker.output()[-2000:]}")
        assert worker.popen.poll() is None, worker.output()

        # And back: a is a primary again (with b's data, which is a's own).
        wait_for(lambda: in_sync(ra), what="a in sync with b")
        replicaof(ra, None)
        after = [checkout(f"after{n}") for n in range(3)]
        for event in after:
            enqueue(ra, event)
        wait_for(
            lambda: applied(*after) and pending(ra) == 0,
            timeout=30,
            what=f"events after the failover: {worker.output()[-3000:]}",
        )
        assert worker.popen.poll() is None
        assert errors_counted(port) >= 2
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()
    assert "Traceback" not in worker.output()


# --- in process: MASTERDOWN, READONLY, WRONGTYPE ----------------------------------------------------------------


class Running:
    """A Worker's run loop in a thread; what it raised, if anything."""

    def __init__(self, worker: Worker):
        self.worker, self.raised = worker, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # noqa: BLE001 (what the test reports)
            self.raised.append(exc)

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.raised

    def stop(self) -> None:
        self.worker.stopping.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def counted() -> float:
    return REGISTRY.get_sample_value(ERRORS) or 0.0


FAULTS = {
    # A replica whose primary is unreachable, told not to serve stale data: every read is MASTERDOWN.
    "MASTERDOWN": (
        lambda r: (r.config_set("replica-serve-stale-data", "no"), r.execute_command("REPLICAOF", "127.0.0.1", 1)),
        lambda r: (r.execute_command("REPLICAOF", "NO", "ONE"), r.config_set("replica-serve-stale-data", "yes")),
        logging.WARNING,
    ),
    # A replica serving its data: XREADGROUP (a write) is READONLY.
    "READONLY": (
        lambda r: r.execute_command("REPLICAOF", "127.0.0.1", 1),
        lambda r: r.execute_command("REPLICAOF", "NO", "ONE"),
        logging.WARNING,
    ),
    # Something else wrote the failure counts' key with another type: unexpected, logged as an error, retried.
    "WRONGTYPE": (lambda r: r.set(KEYS.failures, "not a hash"), lambda r: r.delete(KEYS.failures), logging.ERROR),
}


@pytest.mark.parametrize("reply", list(FAULTS))
def test_an_error_reply_is_counted_and_retried_never_fatal(servers, db, database_url, reply, caplog):
    make_fault, repair, level = FAULTS[reply]
    server = servers()
    r = server.client()
    r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    event = checkout("faulty")
    enqueue(r, event)
    cache_answers(r, "faulty")
    make_fault(r)
    settings = Settings(
        webhook_secrets=(SECRET,), redis_url=server.url, database_url=database_url, claim_idle_ms=1000, metrics_port=0
    )
    before = counted()
    with caplog.at_level(logging.INFO, logger="consumer.worker"):
        running = Running(Worker(settings, db, connect_redis(server.url, timeout=2), "w1", block_ms=100))
        try:
            wait_for(lambda: counted() >= before + 3, what=f"three {reply} replies met")
            assert running.alive(), running.raised
            repair(r)
            wait_for(
                lambda: pending(r) == 0 and r.exists(KEYS.entitlement_answer("faulty")) == 0 and applied(event),
                what="the event applied and settled after the repair",
            )
            assert running.alive(), running.raised
        finally:
            running.stop()
    assert not running.raised
    assert rows(event) == {event["id"]: "processed"}
    met = [rec for rec in caplog.records if rec.name == "consumer.worker" and reply in rec.getMessage()]
    assert met and {rec.levelno for rec in met} == {level}, [rec.getMessage() for rec in met]


# --- the batch size ----------------------------------------------------------------------------------------------


def test_the_batch_size_halves_on_missed_deadlines_and_grows_back(settings, db, redis_server, redis_url):
    r = redis_server.client()
    for n in range(40):
        enqueue(r, checkout(f"batch{n}", created=1_700_000_000 + n))
    worker = Worker(settings, db, connect_redis(redis_url), "w1", batch_size=8)
    worker.stream.ensure_group()
    generous = worker.timing
    worker.timing = dataclasses.replace(generous, deadline_ms=-1000)  # every batch misses it, whatever its size

    sizes = []
    for _ in range(5):
        worker.process(worker.stream.read_new(worker.batch_size, 100))
        sizes.append(worker.batch_size)
    assert sizes == [4, 2, 1, 1, 1]

    worker.timing = generous  # the stall is over: batches commit well within the deadline again
    sizes = []
    for _ in range(5):
        entries = worker.stream.read_new(worker.batch_size, 100)
        assert len(entries) == (sizes[-1] if sizes else 1)
        worker.process(entries)
        sizes.append(worker.batch_size)
    assert sizes == [2, 4, 8, 8, 8]
