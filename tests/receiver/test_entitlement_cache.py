"""The entitlement cache's keys and guard, on real redis-servers: no community id can name another key, a cached
value that is not an answer is a miss, a key of the wrong type or a full or read-only Redis makes the cache step
aside (never a 500), and the consumer's invalidation (DEL only) works whatever Redis holds, even when it is full."""

from __future__ import annotations

import json
import time

import pytest
import redis

from billing.config import Settings
from billing.redis_io import ENTITLEMENT_TOKEN_TTL_SECONDS, invalidate_entitlements
from consumer.entries import Settlement
from consumer.stream import EventStream
from harness import RedisServer
from models.tables import Subscription
from receiver.entitlement_cache import EntitlementCache
from receiver.sample_events import build_event
from tests.receiver.api_helpers import V1, consume, ents, row
from tests.redis_memory_helpers import fill_until_refused

KEYS = Settings().keys
STALE = {
    "community_id": "42",
    "tier": "elite",
    "status": "active",
    "max_members": 10000,
    "features": ["api_access"],
    "in_grace_period": False,
    "grace_until": None,
}


@pytest.fixture
def full_redis():
    server = RedisServer().start()
    yield server
    server.close()


IDS = [
    "42",
    "gen:42",
    "answer:42",
    "token:42",
    "answer",
    "token",
    "gen",
    "answer:token:42",
    "token:answer:42",
    "billing:entitlements:42",
    "x" * 128,
]


def test_no_community_id_names_another_key():
    keys = {}
    for community_id in IDS:
        for kind, key in zip(("answer", "token"), KEYS.entitlements(community_id)):
            assert key not in keys, f"{kind} of {community_id!r} is also {keys[key]}"
            keys[key] = (kind, community_id)
    assert len({KEYS.entitlement_answer("42"), KEYS.entitlement_token("42"), KEYS.seen("42")}) == 3
    # Nor a key of the cache before these, which an older receiver (any id then: letters, digits, _ . : -) wrote.
    for key in keys:
        assert not key.startswith("billing:entitlements:"), key


def test_an_answer_cached_under_a_strange_id_never_breaks_an_invalidation(settings, client, db, r):
    """The issue's story: a GET of `gen:42` (whatever the API now answers to it) and then a change to community 42."""
    response = client.get(f"{V1}/gen:42/entitlements")
    assert response.status_code in (200, 400), response.data
    cache = client.application.extensions["entitlement_cache"]
    cache.put("gen:42", {**STALE, "community_id": "gen:42"}, cache.get("gen:42")[1], 300)  # as the old API would
    row("42", "premium", stripe_subscription_id="sub_42", stripe_customer_id="cus_42")
    assert ents(client, "42")["tier"] == "premium" and ents(client, "42")["source"] == "cache"
    # The consumer applies a change to 42: settling (with its invalidation) must go through.
    consume(
        settings,
        db,
        r,
        build_event(
            "customer.subscription.updated",
            "42",
            tier="elite",
            status="active",
            customer_id="cus_42",
            subscription_id="sub_42",
            created=int(time.time()),
        ),
    )
    answer = ents(client, "42")
    assert (answer["tier"], answer["source"]) == ("elite", "database")
    assert client.get(f"{V1}/gen:42/entitlements").status_code in (200, 400)


@pytest.mark.parametrize("value", [b"1", b"garbage", b"[1, 2]", b"null", b'"a string"', b"\xff\xfe", b""])
def test_a_cached_value_that_is_not_a_json_object_is_a_miss_and_replaced(client, r, value):
    row("c1", "premium")
    r.set(KEYS.entitlement_answer("c1"), value, ex=300)
    answer = ents(client)
    assert (answer["tier"], answer["source"]) == ("premium", "database")
    assert json.loads(r.get(KEYS.entitlement_answer("c1")))["tier"] == "premium"  # replaced by the real answer
    assert ents(client)["source"] == "cache"


@pytest.mark.parametrize("which", ["answer", "token"])
def test_a_key_holding_another_type_is_stepped_around(client, r, which):
    row("c1", "premium")
    key = KEYS.entitlement_answer("c1") if which == "answer" else KEYS.entitlement_token("c1")
    r.hset(key, "field", "value")
    for _ in range(2):
        answer = ents(client)
        assert answer["tier"] == "premium"
    if which == "answer":  # the answer is stored over it (SET replaces any type) and then served
        assert answer["source"] == "cache"
    else:  # no token can be set: nothing is cached, every read goes to the database
        assert answer["source"] == "database" and r.type(KEYS.entitlement_answer("c1")) == b"none"
    # The consumer's invalidation works on either.
    pipe = r.pipeline(transaction=True)
    invalidate_entitlements(pipe, KEYS, "c1")
    pipe.execute()
    assert r.exists(KEYS.entitlement_answer("c1"), KEYS.entitlement_token("c1")) == 0
    assert ents(client)["source"] == "database" and ents(client)["source"] == "cache"


def test_a_reader_that_read_before_an_invalidation_never_caches_even_after_another_reader_did(r, redis_url):
    early, late = EntitlementCache(r, KEYS), EntitlementCache(redis.Redis.from_url(redis_url), KEYS)
    _, early_token = early.get("c1")
    assert 0 < r.ttl(KEYS.entitlement_token("c1")) <= ENTITLEMENT_TOKEN_TTL_SECONDS
    assert early.get("c1") == (None, early_token)  # readers in the same window share the guard
    pipe = r.pipeline(transaction=True)
    invalidate_entitlements(pipe, KEYS, "c1")
    pipe.execute()
    _, late_token = late.get("c1")
    assert late_token not in (None, early_token)
    early.put("c1", STALE, early_token, 300)
    assert r.exists(KEYS.entitlement_answer("c1")) == 0
    late.put("c1", {**STALE, "tier": "basic"}, late_token, 300)
    assert late.get("c1") == ({**STALE, "tier": "basic"}, None)


@pytest.fixture
def warm(make_client, full_redis):
    """An API client on the test's own Redis, communities c1 (premium, its answer cached) and c2 (basic, not)."""
    client = make_client(redis_url=full_redis.url)
    row("c1", "premium")
    row("c2", "basic")
    assert ents(client, "c1")["source"] == "database" and ents(client, "c1")["source"] == "cache"
    return client, full_redis.client()


def test_a_full_redis_serves_hits_steps_aside_on_misses_and_still_invalidates(warm):
    client, r = warm
    fill_until_refused(r)
    assert ents(client, "c1")["source"] == "cache"  # a hit needs no memory
    for _ in range(2):  # a miss cannot take a guard token: answered from the database, not cached, no error
        answer = ents(client, "c2")
        assert (answer["tier"], answer["source"]) == ("basic", "database")
    assert r.exists(KEYS.entitlement_answer("c2"), KEYS.entitlement_token("c2")) == 0
    # The consumer's invalidation is never refused, even now (a MULTI with one refused command is refused whole).
    Subscription.update(tier="elite").where(Subscription.community_id == "c1").execute()
    EventStream(r, client.application.config["SETTINGS"], "t1").settle(Settlement(changed_communities=("c1",)))
    assert r.exists(KEYS.entitlement_answer("c1")) == 0
    assert ents(client, "c1")["tier"] == "elite"
    r.config_set("maxmemory", 0)
    assert ents(client, "c2")["source"] == "database" and ents(client, "c2")["source"] == "cache"


def test_a_read_only_replica_serves_hits_and_steps_aside_on_misses(warm):
    """A failover in progress: the cache's Redis became a replica (of a primary that is not there yet)."""
    client, r = warm
    r.execute_command("REPLICAOF", "127.0.0.1", "1")  # keeps its data while it tries to connect
    try:
        assert ents(client, "c1")["source"] == "cache"
        assert [ents(client, "c2")["source"] for _ in range(2)] == ["database", "database"]
    finally:
        r.execute_command("REPLICAOF", "NO", "ONE")
    assert ents(client, "c2")["source"] == "database" and ents(client, "c2")["source"] == "cache"
