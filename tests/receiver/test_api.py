"""GET /v1/communities/<id>/subscription and /entitlements through the Flask test client, on a real
redis-server and both databases: the answers, the cache and its invalidation, grace, Redis down, the token."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
import time

import pytest
from prometheus_client import REGISTRY

from billing.clock import utcnow
from billing.config import Settings
from billing.redis_io import invalidate_entitlements
from harness import wait_for
from models.db import database_proxy
from models.tables import AuditLog, Subscription
from receiver import create_app
from receiver.sample_events import EVENT_TYPES, build_event
from tests.entitlement_helpers import STARTER, TIER_NAMES, expected_tier
from tests.receiver.api_helpers import V1, consume, ents, row
from tests.stripe_helpers import sign

TOKEN = "s3cret-token"
KEYS = Settings().keys


def cache_counts() -> tuple[float, float]:
    sample = REGISTRY.get_sample_value
    return (
        sample("billing_entitlement_cache_requests_total", {"result": "hit"}) or 0.0,
        sample("billing_entitlement_cache_requests_total", {"result": "miss"}) or 0.0,
    )


def test_subscription_answers_every_contract_field(client):
    t = dt.datetime(2026, 3, 16, 11, 3, 41)
    row(
        "c1",
        "elite",
        "past_due",
        stripe_customer_id="cus_1",
        stripe_subscription_id="sub_1",
        grace_until=t + dt.timedelta(days=1),
        current_period_start=t,
        current_period_end=t + dt.timedelta(days=30),
        updated_at=t + dt.timedelta(seconds=5),
    )
    response = client.get(f"{V1}/c1/subscription")
    assert response.status_code == 200 and response.is_json
    assert response.get_json() == {
        "community_id": "c1",
        "tier": "elite",
        "status": "past_due",
        "stripe_customer_id": "cus_1",
        "stripe_subscription_id": "sub_1",
        "grace_until": "2026-03-17T11:03:41Z",
        "current_period_start": "2026-03-16T11:03:41Z",
        "current_period_end": "2026-04-15T11:03:41Z",
        "updated_at": "2026-03-16T11:03:46Z",
    }


def test_no_subscription_is_404_but_starter_entitlements(client):
    response = client.get(f"{V1}/nobody/subscription")
    assert response.status_code == 404 and response.is_json and response.get_json()["error"]
    assert ents(client, "nobody") == {
        "community_id": "nobody",
        "tier": "starter",
        "status": None,
        "max_members": 100,
        "features": STARTER,
        "in_grace_period": False,
        "grace_until": None,
        "source": "database",
    }


# Every id billing.community refuses: the consumer cannot store them, and the API says why (the rule).
MALFORMED_IDS = [
    "bad%20id!",
    "a%20b",
    "x" * 129,
    "x" * 200,
    "abc%0A",
    "caf%C3%A9",
    "a%00b",
    "a:b",
    "guild:42",
    "a%2Fb",
    "a/b",
    "%E2%80%8Bx",
    "x%09",
]


@pytest.mark.parametrize("community_id", MALFORMED_IDS)
@pytest.mark.parametrize("what", ["subscription", "entitlements"])
def test_a_malformed_community_id_is_400_json_with_the_rule(client, r, community_id, what):
    from billing import community

    response = client.get(f"{V1}/{community_id}/{what}")
    assert response.status_code == 400 and response.is_json, response.data
    assert response.get_json()["error"] == f"malformed community id: {community.RULE}"
    assert r.keys("billing:entitlement*") == []  # nothing cached under a strange key


# Ids the old API pattern refused (a leading '.', '-' or '_'), though the consumer stored them.
VALID_IDS = ["x" * 128, "Ab9_.-z", ".hidden", "-x", "_", "..x", "1", "a.b-c_d", "%2E%2E", "%2E"]


@pytest.mark.parametrize("community_id", VALID_IDS)
def test_every_id_the_rule_allows_is_readable(client, community_id):
    from urllib.parse import unquote

    from billing import community

    stored = unquote(community_id)
    assert community.is_valid(stored)
    assert client.get(f"{V1}/{community_id}/subscription").status_code == 404
    row(stored, "elite")
    assert client.get(f"{V1}/{community_id}/subscription").get_json()["community_id"] == stored
    answer = ents(client, community_id)
    assert (answer["community_id"], answer["tier"]) == (stored, "elite")


def test_the_api_and_its_document_use_the_one_rule():
    from billing import community
    from receiver.openapi import DOCUMENT

    for path in ["/v1/communities/{community_id}/subscription", "/v1/communities/{community_id}/entitlements"]:
        [parameter] = DOCUMENT["paths"][path]["get"]["parameters"]
        assert parameter["schema"]["pattern"] == community.PATTERN
        assert {"400", "401", "403"} <= set(DOCUMENT["paths"][path]["get"]["responses"])


@pytest.mark.parametrize("tier", TIER_NAMES)
def test_each_tier_through_the_api(client, tier):
    row("c1", tier)
    max_members, features = expected_tier(tier)
    answer = ents(client)
    assert (answer["tier"], answer["status"], answer["max_members"]) == (tier, "active", max_members)
    assert answer["features"] == features


def test_cache_first_with_hit_and_miss_counted(make_client, r):
    client = make_client(entitlement_ttl_seconds=120)
    row("c1", "exclusive")
    hits, misses = cache_counts()
    first = ents(client)
    assert first["source"] == "database" and cache_counts() == (hits, misses + 1)
    assert 0 < r.ttl(KEYS.entitlement_answer("c1")) <= 120
    second = ents(client)
    assert second["source"] == "cache" and cache_counts() == (hits + 1, misses + 1)
    assert {**second, "source": "database"} == first
    Subscription.update(tier="basic").execute()  # written behind the consumer's back: the cache still answers
    assert (ents(client)["source"], ents(client)["tier"]) == ("cache", "exclusive")


def test_an_in_grace_answer_is_never_cached_past_grace_until(client, r):
    grace_until = utcnow() + dt.timedelta(seconds=10)
    row("c1", "premium", "past_due", grace_until=grace_until)
    # Mid-second, so a TTL counted from the start of the second would overshoot by 400 ms or more.
    wait_for(lambda: 0.4 <= time.time() % 1 < 0.8, interval=0.005, what="mid-second")
    answer = ents(client)
    pttl, now_ms = r.pttl(KEYS.entitlement_answer("c1")), time.time() * 1000
    assert (answer["in_grace_period"], answer["grace_until"]) == (True, grace_until.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert 0 < r.ttl(KEYS.entitlement_answer("c1")) <= 10
    grace_ms = grace_until.replace(tzinfo=dt.timezone.utc).timestamp() * 1000
    assert now_ms + pttl <= grace_ms + 200, f"cached until {now_ms + pttl - grace_ms:.0f} ms after grace ends"


@pytest.mark.parametrize("status", ["canceled", "unpaid"])
def test_ended_subscriptions_answer_starter(client, status):
    row("c1", "elite", status)
    answer = ents(client)
    assert (answer["tier"], answer["status"], answer["features"], answer["max_members"]) == (
        "starter",
        status,
        STARTER,
        100,
    )


def test_in_grace_keeps_the_tier(client):
    grace_until = utcnow() + dt.timedelta(hours=1)
    row("c1", "elite", "past_due", grace_until=grace_until)
    answer = ents(client)
    assert (answer["tier"], answer["status"], answer["in_grace_period"]) == ("elite", "past_due", True)
    assert answer["grace_until"] == grace_until.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert answer["features"] == expected_tier("elite")[1]


def test_expired_grace_is_starter_unpaid_at_read_time_with_nothing_written(client):
    grace_until = utcnow() - dt.timedelta(seconds=5)
    row("c1", "elite", "past_due", grace_until=grace_until)
    answer = ents(client)
    assert answer == {
        "community_id": "c1",
        "tier": "starter",
        "status": "unpaid",
        "max_members": 100,
        "features": STARTER,
        "in_grace_period": False,
        "grace_until": None,
        "source": "database",
    }
    stored = client.get(f"{V1}/c1/subscription").get_json()
    assert (stored["tier"], stored["status"]) == ("elite", "past_due")  # the sweep writes it, not the reader
    assert Subscription.get(Subscription.community_id == "c1").status == "past_due"
    assert AuditLog.select().count() == 0


# --- invalidation ------------------------------------------------------------------------------------------


def event(event_type, created, **kw):
    return build_event(event_type, "c1", customer_id="cus_1", subscription_id="sub_1", created=created, **kw)


# event type -> (events before it, the event's own arguments, expected (tier, status, in grace) after it)
CHANGES = {
    "checkout.session.completed": (["checkout"], {"tier": "elite"}, ("elite", "active", False)),
    "checkout.session.async_payment_succeeded": ([], {"tier": "elite"}, ("elite", "active", False)),
    "checkout.session.async_payment_failed": ([], {}, ("starter", "unpaid", False)),
    "invoice.paid": (["checkout", "invoice.payment_failed"], {"tier": "basic"}, ("basic", "active", False)),
    "invoice.payment_failed": (["checkout"], {"tier": "basic"}, ("basic", "past_due", True)),
    "customer.subscription.updated": (["checkout"], {"tier": "elite", "status": "active"}, ("elite", "active", False)),
    "customer.subscription.deleted": (["checkout"], {}, ("starter", "canceled", False)),
}


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_type_drops_the_cached_answer(settings, client, db, r, event_type):
    assert set(CHANGES) == set(EVENT_TYPES)
    before, kwargs, expected = CHANGES[event_type]
    start = int(time.time()) - 100  # recent: a grace period started by these events has not ended
    consume(
        settings,
        db,
        r,
        *[
            event("checkout.session.completed" if e == "checkout" else e, start + i, tier="basic")
            for i, e in enumerate(before)
        ],
    )
    old = ents(client)
    assert ents(client) == {**old, "source": "cache"}
    consume(settings, db, r, event(event_type, start + 50, **kwargs))
    new = ents(client)
    assert new["source"] == "database"
    assert (new["tier"], new["status"], new["in_grace_period"]) == expected
    assert (new["tier"], new["status"]) != (old["tier"], old["status"])
    assert ents(client) == {**new, "source": "cache"}


def test_a_reader_older_than_an_invalidation_cannot_cache_its_answer(client, r):
    cache = client.application.extensions["entitlement_cache"]
    cached, token = cache.get("c1")
    assert cached is None and token
    stale = {
        "community_id": "c1",
        "tier": "elite",
        "status": "active",
        "max_members": 10000,
        "features": ["api_access"],
        "in_grace_period": False,
        "grace_until": None,
    }
    pipe = r.pipeline(transaction=True)  # the consumer commits a change and invalidates meanwhile
    invalidate_entitlements(pipe, KEYS, "c1")
    pipe.execute()
    cache.put("c1", stale, token, 300)
    assert r.exists(KEYS.entitlement_answer("c1")) == 0
    assert ents(client)["tier"] == "starter"  # the database's answer, not the stale one
    cached, token = cache.get("c1")
    assert cached is not None and cached["tier"] == "starter" and token is None  # a hit needs no token
    cache.put("c1", stale, "not-the-guard-token", 300)
    assert cache.get("c1")[0]["tier"] == "starter"


# --- Redis down ----------------------------------------------------------------------------------------------


def timed(client, path):
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


@pytest.mark.parametrize("outage", ["killed", "hung"])
def test_redis_down_answers_from_the_database_fast(make_client, own_redis, outage):
    client = make_client(redis_url=own_redis.url)
    row("c1", "premium")
    assert ents(client)["source"] == "database" and ents(client)["source"] == "cache"
    if outage == "killed":
        own_redis.kill()
    else:
        own_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    for _ in range(3):
        response, seconds = timed(client, f"{V1}/c1/entitlements")
        assert response.status_code == 200 and seconds < 1.0, seconds
        assert (response.get_json()["source"], response.get_json()["tier"]) == ("database", "premium")
        response, seconds = timed(client, f"{V1}/c1/subscription")
        assert response.status_code == 200 and response.get_json()["tier"] == "premium" and seconds < 1.0
    if outage == "killed":
        own_redis.start()
    else:
        own_redis.process.send_signal(signal.SIGCONT)
    wait_for(lambda: ents(client)["source"] == "cache", what="the cache to answer again")


# --- API_TOKEN ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        f"Token {TOKEN}",
    ],
)
@pytest.mark.parametrize("path", ["c1/subscription", "c1/entitlements", "bad%20id/entitlements"])
def test_without_the_right_token_v1_is_401_json(make_client, authorization, path):
    client = make_client(api_token=TOKEN)
    row("c1", "premium")
    response = client.get(f"{V1}/{path}", headers={} if authorization is None else {"Authorization": authorization})
    assert response.status_code == 401 and response.is_json
    assert "token" in response.get_json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "])
def test_the_right_token_opens_v1(make_client, authorization):
    client = make_client(api_token=TOKEN)
    row("c1", "premium")
    headers = {"Authorization": authorization}
    assert client.get(f"{V1}/c1/subscription", headers=headers).get_json()["tier"] == "premium"
    assert ents(client, **headers)["tier"] == "premium"


def test_the_token_guards_only_v1(make_client):
    client = make_client(api_token=TOKEN)
    body = json.dumps(build_event("invoice.paid", "c1")).encode()
    response = client.post("/webhooks/stripe", data=body, headers=sign(body))
    assert response.status_code == 200 and response.get_json()["status"] == "queued"
    for path in ["/healthz", "/readyz", "/openapi.json"]:
        assert client.get(path).status_code == 200, path


# --- without API_TOKEN: loopback only ------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_loopback_clients_are_answered(make_client, address):
    client = make_client(api_token="")
    row("c1", "premium")
    environ = {"REMOTE_ADDR": address}
    assert client.get(f"{V1}/c1/subscription", environ_base=environ).get_json()["tier"] == "premium"
    response = client.get(f"{V1}/c1/entitlements", environ_base=environ)
    assert response.status_code == 200 and response.get_json()["tier"] == "premium"


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.7",
        "192.168.1.20",
        "203.0.113.9",
        "2001:db8::1",
        "::ffff:10.0.0.7",
        "0.0.0.0",
        "::",
        "fe80::1%eth0",
        "",
        "localhost",
    ],
)
@pytest.mark.parametrize("path", ["c1/subscription", "c1/entitlements", "bad%20id/entitlements"])
def test_without_a_token_other_clients_get_403_json(make_client, r, address, path):
    client = make_client(api_token="")
    row("c1", "premium")
    response = client.get(f"{V1}/{path}", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 403 and response.is_json, response.data
    assert "API_TOKEN" in response.get_json()["error"]
    assert r.keys("billing:entitlement*") == []  # nothing read, nothing cached
    for other in ["/healthz", "/openapi.json", "/metrics"]:  # only /v1 is guarded
        assert client.get(other, environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_with_a_token_every_address_needs_it(make_client):
    client = make_client(api_token=TOKEN)
    row("c1", "premium")
    for address in ["127.0.0.1", "10.0.0.7"]:
        environ = {"REMOTE_ADDR": address}
        assert client.get(f"{V1}/c1/subscription", environ_base=environ).status_code == 401
        response = client.get(
            f"{V1}/c1/subscription", environ_base=environ, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert response.status_code == 200 and response.get_json()["tier"] == "premium"


def test_create_app_warns_when_v1_is_loopback_only(make_client, caplog):
    with caplog.at_level("WARNING", logger="receiver"):
        make_client(api_token="")
    [warning] = [rec for rec in caplog.records if "API_TOKEN" in rec.getMessage()]
    assert warning.levelname == "WARNING" and warning.name == "receiver"
    assert "loopback" in warning.getMessage() and "reverse proxy" in warning.getMessage()
    caplog.clear()
    with caplog.at_level("WARNING", logger="receiver"):
        make_client(api_token=TOKEN)
    assert not [rec for rec in caplog.records if "API_TOKEN" in rec.getMessage()]


# --- database down -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["postgresql-unreachable", "sqlite-without-tables"])
def test_database_down_is_503_json_never_500(settings, redis_url, tmp_path, caplog, database):
    from harness import free_port

    port = free_port()
    url = (
        f"postgresql://billing:hunter2-pw@127.0.0.1:{port}/billing"
        if database.startswith("postgresql")
        else f"sqlite:///{tmp_path}/empty.db"
    )
    app = create_app(dataclasses.replace(settings, database_url=url, redis_url=redis_url))
    client = app.test_client()
    try:
        for path in ["c1/subscription", "c1/entitlements"]:
            response = client.get(f"{V1}/{path}")
            assert response.status_code == 503 and response.is_json, response.data
            assert response.get_json() == {"error": "database unavailable; retry later"}
            assert response.headers["Retry-After"] == "5"
            assert str(port).encode() not in response.data
    finally:
        app.extensions["redis"].close()
        database_proxy.initialize(None)
    assert "database unavailable" in caplog.text and "hunter2" not in caplog.text
