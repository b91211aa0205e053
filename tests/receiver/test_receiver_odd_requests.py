"""Every odd request to POST /webhooks/stripe gets a 4xx, never a 500: non-finite and huge numbers in a
correctly signed body, ids and types that are not text Redis can store, Stripe-Signature headers that
are not ASCII or not numbers, odd Content-Length values. Through the Flask test client, on a real Redis."""

from __future__ import annotations

import json

import pytest

from billing.stripe_events import event_created, parse_envelope
from tests.receiver_helpers import STREAM, WEBHOOK, entries, event_bytes
from tests.stripe_helpers import sign


def with_created(raw: str) -> bytes:
    """A realistic event whose `created` is written as `raw` (JSON text, not necessarily valid JSON)."""
    event, _ = event_bytes("invoice.paid")
    text = json.dumps(event)
    return text.replace(f'"created": {event["created"]}', f'"created": {raw}', 1).encode()


NON_FINITE = {
    "created-NaN": with_created("NaN"),
    "created-Infinity": with_created("Infinity"),
    "created-minus-Infinity": with_created("-Infinity"),
    "created-1e400": with_created("1e400"),
    "created-minus-1e400": with_created("-1e400"),
    "amount-NaN": event_bytes("invoice.paid")[1].replace(b'"amount_paid": ', b'"amount_paid": NaN, "x": ', 1),
    "huge-exponent-elsewhere": event_bytes("invoice.paid")[1].replace(
        b'"amount_paid": ', b'"y": 2e999, "amount_paid": ', 1
    ),
    "int-over-4300-digits": with_created("1" * 5000),
}


ODD_ENVELOPES = {
    "id-lone-surrogate": b'{"id": "evt_\\ud800", "type": "invoice.paid", "created": 1700000000}',
    "type-lone-surrogate": b'{"id": "evt_1", "type": "invoice.\\udfff", "created": 1700000000}',
    "id-a-list": b'{"id": ["evt_1"], "type": "invoice.paid"}',
    "id-an-object": b'{"id": {"id": "evt_1"}, "type": "invoice.paid"}',
    "id-null": b'{"id": null, "type": "invoice.paid"}',
    "id-true": b'{"id": true, "type": "invoice.paid"}',
    "type-a-number": b'{"id": "evt_1", "type": 1.5}',
    "type-NaN": b'{"id": "evt_1", "type": NaN}',
    "empty-body": b"",
    "json-null": b"null",
    "deeply-nested": b'{"id": "evt_1", "type": "invoice.paid", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


MALFORMED = {**NON_FINITE, **ODD_ENVELOPES}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_signed_body_with_a_number_stripe_never_sends_or_an_odd_envelope_is_400_malformed(webhook_client, r, body):
    response = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    assert response.status_code == 400, response.data
    assert response.is_json and response.get_json()["error"].startswith("malformed event: ")
    assert r.xlen(STREAM) == 0


ACCEPTED_CREATED = {
    # `created` as written -> the stream entry's `created` (0 when it is no usable time)
    "1700000000": b"1700000000",
    "1700000000.9": b"1700000000",
    "1e9": b"1000000000",
    '"1700000000"': b"0",
    "true": b"0",
    "null": b"0",
    "[]": b"0",
    "{}": b"0",
    "1" + "0" * 30: b"0",  # past any epoch second a database column can hold
    "1e300": b"0",
    "-" + "9" * 4000: b"0",
}


@pytest.mark.parametrize("raw,stored", ACCEPTED_CREATED.items(), ids=[k[:20] for k in ACCEPTED_CREATED])
def test_an_odd_created_is_queued_with_created_0(webhook_client, r, raw, stored):
    body = with_created(raw)
    response = webhook_client.post(WEBHOOK, data=body, headers=sign(body))
    assert response.status_code == 200 and response.get_json()["status"] == "queued", response.data
    [entry] = entries(r)
    assert entry["created"] == stored and entry["payload"] == body


ODD_VALUES = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e308,
    10**400,
    -(10**400),
    2**63,
    "x",
    None,
    True,
    [],
    {},
    1.5,
    2**63 - 1,
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=[repr(v)[:20] for v in ODD_VALUES])
def test_event_created_never_raises(value):
    created = event_created({"created": value})
    assert isinstance(created, int) and -(2**63) < created < 2**63


def test_parse_envelope_refuses_non_finite_numbers_however_written():
    for text in ["NaN", "Infinity", "-Infinity", "1e400", "-1E+400", "123456789e999"]:
        with pytest.raises(ValueError, match="not a finite number"):
            parse_envelope('{"id": "evt_1", "type": "x", "created": %s}' % text)
    assert parse_envelope('{"id": "evt_1", "type": "x", "n": 1e308}')["n"] == 1e308


SIGNATURE_HEADERS = {
    # header -> reason
    "t=1700000000,v1=\xe9\xe9": "malformed",  # not ASCII: hmac.compare_digest refuses to compare it
    "t=\xb2\xb3,v1=abc": "malformed",
    "t=1700000000,v1=ab\xff": "malformed",
    "t=" + "9" * 5000 + ",v1=" + "a" * 64: "malformed",
    "t=1e9,v1=" + "a" * 64: "malformed",
    "t=,v1=": "malformed",
    ",,,": "malformed",
    "t=1700000000,v1=" + "a" * 64 + ",t=zzz": "mismatch",
    "t=-1,v1=" + "a" * 64: "malformed",  # not a unix time
    "t=" + "9" * 4000 + ",v1=" + "a" * 64: "malformed",
}


@pytest.mark.parametrize("header,reason", SIGNATURE_HEADERS.items(), ids=[repr(h[:24]) for h in SIGNATURE_HEADERS])
def test_an_odd_signature_header_is_400_with_its_reason(webhook_client, r, header, reason):
    _, body = event_bytes("invoice.paid")
    response = webhook_client.post(
        WEBHOOK, data=body, headers={"Stripe-Signature": header, "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.data
    assert response.get_json()["reason"] == reason
    assert r.xlen(STREAM) == 0


@pytest.mark.parametrize("content_length", ["abc", "-1", "", "1e3", " 12", "99999999999999999999999"])
def test_an_odd_content_length_is_never_a_500(webhook_client, r, content_length):
    _, body = event_bytes("invoice.paid")
    response = webhook_client.post(
        WEBHOOK, data=body, headers=sign(body), environ_overrides={"CONTENT_LENGTH": content_length}
    )
    assert response.status_code in (400, 413), (response.status_code, response.data)
    assert response.is_json
