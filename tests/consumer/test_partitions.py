"""STREAM_PARTITIONS > 1 on a single Redis: the receiver routes each event to its partition, two consumers apply every
event exactly once, ops commands cover every partition and name an entry `<partition>:<id>`, and a settlement drops
the cache before any partition's MULTI."""

from __future__ import annotations

import dataclasses
import json
import urllib.request

import redis

from billing.config import Settings
from billing.event_queue import EventQueue
from consumer.entries import DeadLetter, Failure, Settlement, split_ref
from consumer.stream import EventStream
from harness import start_receiver, wait_for
from models.tables import WebhookEvent
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import invoke
from tests.consumer.process_helpers import consumer, lifecycle
from tests.stripe_helpers import sign

PARTS = Settings(stream_partitions=4).keys


def total_pending(client: redis.Redis) -> int:
    return sum(client.xpending(part.stream, "billing")["pending"] for part in PARTS.all_partitions)


def test_two_consumers_apply_every_event_of_four_partitions_exactly_once(consumer_env, redis_server, tmp_path):
    env = {**consumer_env, "STREAM_PARTITIONS": "4"}
    receiver, base = start_receiver(env, str(tmp_path))
    workers = [consumer(env, tmp_path, name, "--batch", "20") for name in ("c1", "c2")]
    events = [e for n in range(50) for e in lifecycle(f"q{n}", 1_700_000_000 + n)]  # 250 events
    try:
        for event in events + events[:20]:  # and 20 resent: duplicates, not queued again
            body = json.dumps(event).encode()
            request = urllib.request.Request(f"{base}/webhooks/stripe", data=body, headers=sign(body), method="POST")
            assert urllib.request.urlopen(request, timeout=5).status == 200
        client = redis_server.client()
        wait_for(
            lambda: WebhookEvent.select().count() == len(events) and total_pending(client) == 0,
            timeout=90,
            what="every event applied by two consumers over four partitions",
        )
    finally:
        for worker in workers:
            worker.stop()
        receiver.stop()
    # One row per event, none failed. (A community's events are spread over the partitions, so some are applied
    # out of order: stale or deferred, as an out-of-order delivery from Stripe would be.)
    rows = {row.stripe_event_id: row.status for row in WebhookEvent.select()}
    assert set(rows) == {event["id"] for event in events}
    assert set(rows.values()) <= {"processed", "stale", "deferred", "ignored"}
    lengths = [client.xlen(part.stream) for part in PARTS.all_partitions]
    assert sum(lengths) == len(events) and all(lengths)  # each event queued once, in every partition some
    for event in events:  # on the partition its id routes it to, beside its dedupe mark
        part = PARTS.partition(PARTS.partition_of(event["id"]))
        assert client.get(part.seen(event["id"])) == b"processed"
    assert not client.exists("stripe:events")  # nothing in the untagged layout's stream
    groups = [client.xinfo_groups(part.stream)[0] for part in PARTS.all_partitions]
    assert all(group["lag"] == 0 for group in groups)


def queued(r, settings: Settings, n: int) -> list[dict]:
    queue = EventQueue(r, settings.keys, 3600)
    # Fixed ids, so which partition each lands on is fixed too (12 of them cover all four; random ids may not).
    events = [
        build_event("invoice.paid", f"o{i}", tier="basic", created=1_700_000_000 + i, event_id=f"evt_ops_{i}")
        for i in range(n)
    ]
    for event in events:
        assert queue.enqueue(event["id"], event["type"], event["created"], json.dumps(event).encode())
    return events


def test_ops_commands_cover_every_partition_and_name_it(r, redis_url, database_url, db):
    settings = Settings(redis_url=redis_url, stream_partitions=4)
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "STREAM_PARTITIONS": "4"}
    events = queued(r, settings, 12)
    gone = EventStream(r, settings, "gone")
    gone.ensure_group()
    entries = gone.read_new(100, 10)  # delivered to a consumer that then died
    assert len(entries) == 12 and {split_ref(e.entry_id)[0] for e in entries} == {0, 1, 2, 3}

    stats = json.loads(invoke(env, "stats", "--json").output)
    assert (stats["stream_length"], stats["pending"], stats["group_lag"]) == (12, 12, 0)
    assert [p["partition"] for p in stats["partitions"]] == [0, 1, 2, 3]
    assert sum(p["pending"] for p in stats["partitions"]) == 12
    assert "PARTITION" in invoke(env, "stats").output

    rows = json.loads(invoke(env, "pending", "--json", "--count", "100").output)
    assert len(rows) == 12
    assert {row["entry_id"] for row in rows} == {e.entry_id for e in entries}
    assert all(row["entry_id"].startswith(f"{row['partition']}:") for row in rows)
    assert invoke(env, "pending").output.splitlines()[0].split()[:2] == ["PARTITION", "ENTRY"]

    target = entries[5].entry_id
    moved = invoke(env, "claim", target, "--to", "c9", "--new-consumer", "--json")
    assert moved.exit_code == 0, moved.output
    assert [row["entry_id"] for row in json.loads(moved.output)["entries"]] == [target]
    p, entry_id = split_ref(target)
    [row] = r.xpending_range(PARTS.partition(p).stream, "billing", entry_id, entry_id, 1)
    assert row["consumer"] == b"c9"
    plain = invoke(env, "claim", entry_id, "--to", "c9", "--new-consumer")  # a bare id names no partition
    assert plain.exit_code == 1 and "not pending" in plain.output

    # Two entries die, in their own partitions' dead letters.
    dying = [e for e in entries if split_ref(e.entry_id)[0] != split_ref(entries[0].entry_id)[0]][:1] + entries[:1]
    gone.settle(Settlement(dead=tuple(DeadLetter(e, "boom", Failure(5, 1)) for e in dying)))
    letters = json.loads(invoke(env, "dead", "list", "--json").output)
    assert sorted(letter["source_id"] for letter in letters) == sorted(split_ref(e.entry_id)[1] for e in dying)
    for letter in letters:
        part = PARTS.partition(letter["partition"])
        assert letter["entry_id"] == f"{letter['partition']}:{split_ref(letter['entry_id'])[1]}"
        assert r.xlen(part.dead_letters) >= 1
    assert not r.exists("stripe:events:dead")

    retried = json.loads(invoke(env, "dead", "retry", letters[0]["entry_id"], "--json").output)
    new_p, new_id = split_ref(retried[0]["new_entry_id"])
    assert new_p == letters[0]["partition"]  # back on the partition it died in
    assert r.xrange(PARTS.partition(new_p).stream, new_id, new_id)[0][1][b"event_id"].decode() == letters[0]["event_id"]
    dropped = invoke(env, "dead", "drop", letters[1]["entry_id"], "--json")
    assert dropped.exit_code == 0, dropped.output
    assert invoke(env, "dead", "list").output.strip() == "no dead letters"
    assert events  # every one queued on its own partition (checked above through the read)


def test_the_cache_is_dropped_before_the_partitions_multi(r, redis_url, monkeypatch):
    """A crash after the DELs and before the MULTI: the cache is gone, the entry still pending, its event not marked
    processed; its redelivery is then a duplicate that drops the cache again (batch.py)."""
    settings = Settings(redis_url=redis_url, stream_partitions=4)
    [event] = queued(r, settings, 1)
    stream = EventStream(r, settings, "w1")
    stream.ensure_group()
    [entry] = stream.read_new(10, 10)
    answer, token = settings.keys.entitlements("o0")
    r.set(answer, "{}")
    r.set(token, "t")

    original = redis.client.Pipeline.execute

    def crash_in_the_multi(self, raise_on_error=True):
        if self.transaction:
            raise redis.ConnectionError("the consumer died here")
        return original(self, raise_on_error)

    monkeypatch.setattr(redis.client.Pipeline, "execute", crash_in_the_multi)
    settlement = Settlement(ack_ids=(entry.entry_id,), processed_event_ids=(event["id"],), changed_communities=("o0",))
    try:
        stream.settle(settlement)
        raise AssertionError("the MULTI was expected to fail")
    except redis.ConnectionError:
        pass
    assert not r.exists(answer, token)  # dropped first
    part = settings.keys.partition(split_ref(entry.entry_id)[0])
    assert r.xpending(part.stream, "billing")["pending"] == 1  # not acknowledged: it will be redelivered
    assert r.get(part.seen(event["id"])) == b"queued"

    monkeypatch.undo()
    assert stream.settle(settlement)
    assert r.xpending(part.stream, "billing")["pending"] == 0 and r.get(part.seen(event["id"])) == b"processed"


def test_a_batch_of_several_partitions_settles_each_in_its_own_slot(r, redis_url):
    settings = Settings(redis_url=redis_url, stream_partitions=4)
    events = queued(r, settings, 8)
    stream = EventStream(r, settings, "w1")
    stream.ensure_group()
    entries = stream.read_new(100, 10)
    failed, done = entries[0], entries[1:]
    prior = stream.prior_state(entries)
    assert not prior.processed_event_ids and not prior.failures
    stream.settle(
        Settlement(
            ack_ids=tuple(e.entry_id for e in done),
            processed_event_ids=tuple(e.event_id for e in done),
            failures={failed.entry_id: Failure(1, 5)},
        )
    )
    again = stream.prior_state(entries)
    assert again.processed_event_ids == {e.event_id for e in done}
    assert again.failures == {failed.entry_id: Failure(1, 5)}
    p, failed_id = split_ref(failed.entry_id)
    assert r.hget(settings.keys.partition(p).failures, failed_id) == b"1:5"
    assert stream.group_state().pending == 1 and len(events) == 8
    # A restarted consumer of the same name resumes its own pending entry, from whichever partition.
    assert [e.entry_id for e in stream.read_own_pending({}, 10)] == [failed.entry_id]
    only = EventStream(r, dataclasses.replace(settings, consumer_partitions=(p,)), "w2")
    assert [part.partition for part in only.parts] == [p]


def test_the_group_gauges_sum_the_partitions_under_their_names(r, redis_url):
    from consumer.metrics import StreamCollector

    settings = Settings(redis_url=redis_url, stream_partitions=4)
    queued(r, settings, 10)
    stream = EventStream(r, settings, "w1")
    stream.ensure_group()
    stream.read_new(3, 10)  # some of them, from each partition up to its share
    gauges = {family.name: family.samples[0].value for family in StreamCollector(stream.group_state).collect()}
    pending = sum(r.xpending(part.stream, "billing")["pending"] for part in PARTS.all_partitions)
    assert gauges["billing_stream_length"] == 10 and gauges["billing_pending_entries"] == pending > 0
    assert gauges["billing_group_lag"] == 10 - pending and gauges["billing_dead_letters"] == 0
