"""`dead drop` and Stripe's 'Resend': an event dies, the cause is fixed, the operator drops the dead letter, and
Stripe's dashboard resends the very same event. The resend is queued (not answered `duplicate` for
DEDUPE_TTL_SECONDS) and applied, taking over the event's `dead` row. Real Redis, a real consumer process, the
receiver's Flask app."""

from __future__ import annotations

import json

import pytest

from billing.config import Settings
from harness import SECRET, wait_for
from models.db import database_proxy
from models.tables import Subscription, WebhookEvent
from receiver import create_app
from receiver.sample_events import build_event
from tests.consumer.ops_helpers import (
    DEAD,
    KEYS,
    add_dead_letter,
    audit_rows,
    invoke,
    start_consumer,
)
from tests.stripe_helpers import sign

BLOCK = (
    "CREATE TRIGGER block_community BEFORE INSERT ON subscriptions WHEN NEW.community_id = 'resent' "
    "BEGIN SELECT RAISE(ABORT, 'subscriptions: community resent is blocked'); END"
)


@pytest.fixture
def receiver(redis_url, sqlite_url):
    db = database_proxy.obj
    app = create_app(Settings(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=sqlite_url))
    database_proxy.initialize(db)  # create_app bound the models to a connection of its own
    yield app.test_client()
    app.extensions["redis"].close()


def post(receiver, body: bytes) -> dict:
    response = receiver.post("/webhooks/stripe", data=body, headers=sign(body))
    assert response.status_code == 200, response.data
    return response.get_json()


def test_after_dead_drop_a_resend_of_the_same_event_is_queued_and_applied(
    receiver, redis_server, redis_url, sqlite_url, tmp_path
):
    client = redis_server.client()
    event = build_event(
        "checkout.session.completed", "resent", tier="elite", customer_id="cus_resent", subscription_id="sub_resent"
    )
    body = json.dumps(event).encode()  # Stripe resends these very bytes
    database_proxy.obj.execute_sql(BLOCK)  # what makes it fail: a fault in our database, fixed below
    assert post(receiver, body)["status"] == "queued"

    worker = start_consumer(redis_url, sqlite_url, tmp_path, "w1", MAX_DELIVERIES="2", CLAIM_IDLE_MS="400")
    try:
        wait_for(lambda: client.xlen(DEAD) == 1, what=f"the event to die: {worker.output()[-2000:]}")
        assert WebhookEvent.get(WebhookEvent.stripe_event_id == event["id"]).status == "dead"
        assert post(receiver, body)["status"] == "duplicate"  # Stripe's own retries are still deduplicated

        database_proxy.obj.execute_sql("DROP TRIGGER block_community")  # the fault is fixed
        [(dead_id, _fields)] = client.xrange(DEAD)
        env = {"REDIS_URL": redis_url, "DATABASE_URL": sqlite_url}
        result = invoke(env, "dead", "drop", dead_id.decode())
        assert result.exit_code == 0, result.output
        assert client.xlen(DEAD) == 0 and client.exists(KEYS.seen(event["id"])) == 0
        assert audit_rows("ops_dead_drop")[0]["event_ids"] == [event["id"]]

        assert post(receiver, body)["status"] == "queued"  # Stripe's 'Resend'
        wait_for(
            lambda: WebhookEvent.get(WebhookEvent.stripe_event_id == event["id"]).status == "processed",
            what=f"the resend to be applied: {worker.output()[-2000:]}",
        )
        sub = Subscription.get(Subscription.community_id == "resent")
        assert (sub.tier, sub.status, sub.stripe_subscription_id) == ("elite", "active", "sub_resent")
        wait_for(lambda: client.get(KEYS.seen(event["id"])) == b"processed", what="the resend settled")
        assert post(receiver, body)["status"] == "duplicate"  # and deduplicated again from now on
    finally:
        worker.stop()
    assert worker.popen.returncode == 0, worker.output()
    assert client.xlen(DEAD) == 0


def test_dropping_several_forgets_each_events_mark_and_only_theirs(redis_server, redis_url, sqlite_url):
    client = redis_server.client()
    events = [build_event("invoice.paid", f"d{n}") for n in range(3)]
    ids = [add_dead_letter(client, event)[0] for event in events]
    for event in events:
        client.set(KEYS.seen(event["id"]), "queued", ex=3600)
    env = {"REDIS_URL": redis_url, "DATABASE_URL": sqlite_url}
    result = invoke(env, "dead", "drop", ids[0], ids[2], "--yes")
    assert result.exit_code == 0, result.output
    assert [client.exists(KEYS.seen(e["id"])) for e in events] == [0, 1, 0]
    assert [i.decode() for i, _ in client.xrange(DEAD)] == [ids[1]]
