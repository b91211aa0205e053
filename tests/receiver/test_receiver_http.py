"""POST /webhooks/stripe through the Flask test client, against a real redis-server."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import time
from collections import Counter

import pytest

from billing.config import ConfigError, Settings
from harness import SECRET, free_port
from receiver import MAX_BODY_BYTES, create_app
from receiver.signing import signature_header
from tests.receiver_helpers import STREAM, WEBHOOK, entries, event_bytes
from tests.stripe_helpers import load_peer_events, sign

OLD_SECRET, NEW_SECRET = "whsec_old_secret_being_rolled", "whsec_new_secret_rolled_in"


def assert_nothing_queued(r):
    assert r.xlen(STREAM) == 0
    assert list(r.scan_iter(match=f"{STREAM}:seen:*")) == []


def test_valid_event_is_queued_with_the_contract_fields(webhook_client, r):
    event, body = event_bytes("invoice.paid")
    before_ms = time.time() * 1000
    response = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    after_ms = time.time() * 1000

    assert response.status_code == 200
    assert response.is_json
    assert response.get_json() == {
        "received": True,
        "status": "queued",
        "event_id": event["id"],
        "event_type": "invoice.paid",
    }
    [entry] = entries(r)
    assert set(entry) - {"_id"} == {"event_id", "event_type", "created", "payload", "received_at"}
    assert entry["event_id"].decode() == event["id"]
    assert entry["event_type"] == b"invoice.paid"
    assert int(entry["created"]) == event["created"]
    assert entry["payload"] == body  # byte for byte, indentation and all
    assert before_ms - 1 <= int(entry["received_at"]) <= after_ms + 1


def test_same_event_again_is_a_duplicate_and_stays_one_entry(webhook_client, r):
    event, body = event_bytes("customer.subscription.updated")
    first = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    again = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    # A redelivery signed later, even re-serialised, is the same event by id.
    reshaped = json.dumps(event).encode()
    third = webhook_client.post(WEBHOOK, data=reshaped, headers=sign(reshaped))

    assert first.get_json()["status"] == "queued"
    for response in (again, third):
        assert response.status_code == 200
        assert response.get_json() == {
            "received": True,
            "status": "duplicate",
            "event_id": event["id"],
            "event_type": event["type"],
        }
    assert [e["payload"] for e in entries(r)] == [body]


def test_dedupe_ttl_and_stream_key_come_from_settings(make_app, r):
    client = make_app(stream_key="custom:events", dedupe_ttl_seconds=1234).test_client()
    event, body = event_bytes("invoice.payment_failed")
    assert client.post(WEBHOOK, data=body, headers=sign(body)).get_json()["status"] == "queued"
    assert r.xlen("custom:events") == 1 and r.xlen(STREAM) == 0
    assert 1200 < r.ttl(Settings(stream_key="custom:events").keys.seen(event["id"])) <= 1234


def test_signing_matches_stripes_scheme_computed_by_hand(webhook_client, r):
    event, body = event_bytes("checkout.session.completed")
    t = int(time.time())
    digest = hmac.new(SECRET.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature_header(body, SECRET, t) == f"t={t},v1={digest}"
    # Stripe may send several v1 signatures (one per active secret) and other schemes: any v1 may match.
    header = f"t={t},v1={'0' * 64},v1={digest},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    response = webhook_client.post(WEBHOOK, data=body, headers={"Stripe-Signature": header})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "queued"
    assert r.xlen(STREAM) == 1


_NOW = int(time.time())
_BODY = event_bytes("invoice.paid")[1]
_NOT_UTF8 = b'{"id": "evt_\xff\xfe", "type": "invoice.paid"}'
SIGNATURE_FAILURES = {
    # name: (body sent, Stripe-Signature header or None, reason)
    "missing": (_BODY, None, "missing"),
    "empty": (_BODY, "", "missing"),
    "garbage": (_BODY, "garbage", "malformed"),
    "t-not-a-number": (_BODY, "t=abc", "malformed"),
    "t-not-a-number-with-v1": (_BODY, "t=abc,v1=" + "a" * 64, "malformed"),
    "no-v1": (_BODY, "t=123", "malformed"),
    "v0-only": (_BODY, "t=123,v0=" + "a" * 64, "malformed"),
    "wrong-secret": (_BODY, signature_header(_BODY, "whsec_someone_else"), "mismatch"),
    "tampered-body": (
        _BODY.replace(b'"invoice.paid"', b'"invoice.voided"'),
        signature_header(_BODY, SECRET),
        "mismatch",
    ),
    "signed-for-other-timestamp": (
        _BODY,
        signature_header(_BODY, SECRET, _NOW).replace(f"t={_NOW}", f"t={_NOW + 1}"),
        "mismatch",
    ),
    "not-utf8": (_NOT_UTF8, signature_header(_NOT_UTF8, SECRET), "malformed"),
}


@pytest.mark.parametrize("body,header,reason", SIGNATURE_FAILURES.values(), ids=SIGNATURE_FAILURES.keys())
def test_signature_failures_are_400_and_queue_nothing(webhook_client, r, body, header, reason):
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    response = webhook_client.post(WEBHOOK, data=body, headers=headers)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["reason"] == reason
    assert isinstance(answer["error"], str) and answer["error"]
    assert_nothing_queued(r)


def test_stale_timestamp_is_expired_per_configured_tolerance(make_app, r):
    _, body = event_bytes("invoice.paid")
    strict = make_app(webhook_tolerance=300).test_client()
    response = strict.post(WEBHOOK, data=body, headers=sign(body, timestamp=int(time.time()) - 301))
    assert response.status_code == 400
    assert response.get_json()["reason"] == "expired"
    assert_nothing_queued(r)
    # The tolerance is the configured one, not a hard-coded 300: a laxer receiver takes the same signature.
    lax = make_app(webhook_tolerance=3600).test_client()
    response = lax.post(WEBHOOK, data=body, headers=sign(body, timestamp=int(time.time()) - 301))
    assert response.status_code == 200
    assert response.get_json()["status"] == "queued"


def test_rolled_secret_accepts_both_old_and_new(make_app, r):
    client = make_app(webhook_secrets=(OLD_SECRET, NEW_SECRET)).test_client()
    for secret in (OLD_SECRET, NEW_SECRET):
        event, body = event_bytes("invoice.paid")
        response = client.post(WEBHOOK, data=body, headers=sign(body, secret=secret))
        assert response.status_code == 200, (secret, response.get_json())
        assert response.get_json()["status"] == "queued"
    _, body = event_bytes("invoice.paid")
    response = client.post(WEBHOOK, data=body, headers=sign(body, secret=SECRET))
    assert response.status_code == 400 and response.get_json()["reason"] == "mismatch"
    # An old-secret signature that is also stale is reported as expired, not as a mismatch.
    response = client.post(WEBHOOK, data=body, headers=sign(body, secret=OLD_SECRET, timestamp=int(time.time()) - 3600))
    assert response.status_code == 400 and response.get_json()["reason"] == "expired"
    assert r.xlen(STREAM) == 2


MALFORMED_EVENTS = {
    "not-json": b"this is not json",
    "truncated-json": b'{"id": "evt_1", "type": "invoice.paid"',
    "json-array": b'[{"id": "evt_1", "type": "invoice.paid"}]',
    "json-string": b'"evt_1"',
    "no-id": b'{"type": "invoice.paid", "created": 1700000000}',
    "no-type": b'{"id": "evt_1", "created": 1700000000}',
    "id-not-a-string": b'{"id": 12345, "type": "invoice.paid"}',
    "empty-type": b'{"id": "evt_1", "type": ""}',
}


@pytest.mark.parametrize("body", MALFORMED_EVENTS.values(), ids=MALFORMED_EVENTS.keys())
def test_validly_signed_but_malformed_event_is_400(webhook_client, r, body):
    response = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    assert response.status_code == 400
    assert response.is_json and response.get_json()["error"]
    assert_nothing_queued(r)


def _padded(size: int) -> tuple[dict, bytes]:
    event, _ = event_bytes("invoice.paid")
    event["data"]["object"]["description"] = ""
    base = len(json.dumps(event).encode())
    event["data"]["object"]["description"] = "x" * (size - base)
    body = json.dumps(event).encode()
    assert len(body) == size
    return event, body


def test_body_over_one_mib_is_413_and_exactly_one_mib_is_accepted(webhook_client, r):
    _, too_big = _padded(MAX_BODY_BYTES + 1)
    response = webhook_client.post(WEBHOOK, data=too_big, headers=sign(too_big))
    assert response.status_code == 413
    assert response.is_json and response.get_json()["error"]
    assert_nothing_queued(r)

    event, just_fits = _padded(MAX_BODY_BYTES)
    response = webhook_client.post(WEBHOOK, data=just_fits, headers=sign(just_fits))
    assert response.status_code == 200
    assert response.get_json()["event_id"] == event["id"]
    assert [e["payload"] for e in entries(r)] == [just_fits]


def test_all_peer_events_in_order(webhook_client, r):
    first_body_of = {}
    for name, body in load_peer_events():
        event_id = json.loads(body)["id"]
        response = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
        assert response.status_code == 200, (name, response.get_data())
        expected = "duplicate" if event_id in first_body_of else "queued"
        assert response.get_json()["status"] == expected, name
        first_body_of.setdefault(event_id, body)
    stream = entries(r)
    assert Counter(e["event_id"].decode() for e in stream) == Counter(list(first_body_of))  # one entry per id
    assert {e["event_id"].decode(): e["payload"] for e in stream} == first_body_of


def test_healthz(webhook_client):
    response = webhook_client.get("/healthz")
    assert response.status_code == 200 and response.get_json()["status"] == "ok"


def test_readyz_checks_redis_and_the_database(db, settings):
    app = create_app(settings)
    response = app.test_client().get("/readyz")
    app.extensions["redis"].close()
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ready", "checks": {"redis": "ok", "database": "ok"}}


def test_readyz_names_an_unreachable_database_without_host_port_or_password(make_app, caplog):
    port = free_port()
    app = make_app(database_url=f"postgresql://billing:hunter2-pw@127.0.0.1:{port}/nowhere")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "unavailable",
        "checks": {"redis": "ok", "database": "failed: OperationalError"},
    }
    for secret in [str(port), "127.0.0.1", "hunter2", "billing", "nowhere"]:
        assert secret.encode() not in response.data
    assert "hunter2" not in caplog.text and "database check failed" in caplog.text  # ops still get the cause


@pytest.mark.parametrize("outage", ["stopped", "hung"])
def test_readyz_names_a_redis_outage_by_kind_only(make_app, own_redis, outage):
    app = make_app(redis_url=own_redis.url)
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    if outage == "stopped":
        own_redis.stop()
    else:
        own_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        response = client.get("/readyz")
    finally:
        if outage == "hung":
            own_redis.process.send_signal(signal.SIGCONT)
    assert response.status_code == 503
    expected = "failed: ConnectionError" if outage == "stopped" else "failed: timeout"
    assert response.get_json() == {"status": "unavailable", "checks": {"redis": expected, "database": "ok"}}
    assert str(own_redis.port).encode() not in response.data and b"127.0.0.1" not in response.data


def test_other_methods_get_json_errors(webhook_client):
    response = webhook_client.get(WEBHOOK)
    assert response.status_code == 405
    assert response.is_json and response.get_json()["error"]


def test_create_app_without_a_secret_names_the_variable(redis_url, tmp_path):
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        create_app(Settings(webhook_secrets=(), redis_url=redis_url, database_url=f"sqlite:///{tmp_path}/x.db"))
