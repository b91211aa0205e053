"""Fuzzing POST /webhooks/stripe through the Flask test client, on a real redis-server: arbitrary bodies
(random bytes, JSON of any shape, real events with fields replaced, bytes of real events garbled), signed
correctly, with an old timestamp, with another secret, with several v1 entries or with arbitrary text, under
odd Content-Type and Content-Length headers. The answer is only ever 200, 400 or 413 (503 is for a Redis that
does not answer), never a 500; a correctly signed event is queued exactly once; nothing else reaches the
stream. Webhooks need no database, so the app gets a throwaway SQLite and the fuzzer runs once, not once per
database."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import hypothesis
from hypothesis import example, given
from hypothesis import strategies as st

from harness import SECRET
from receiver import MAX_BODY_BYTES
from receiver.signing import signature_header
from tests.fuzz.strategies import (
    BASE_EVENTS,
    PEER_EVENTS,
    TEXT,
    dumps,
    fuzz_settings,
    json_values,
    mutated_events,
)
from tests.receiver_helpers import STREAM, WEBHOOK, entries
from tests.stripe_helpers import load_peer_events

STATUSES = {200, 400, 413, 503}
TOLERANCE = 300  # STRIPE_WEBHOOK_TOLERANCE's default, which the app runs with
OTHER_SECRET = "whsec_not_the_one_we_have"
# Latin-1 (what a WSGI server hands the app) without CR and LF (no HTTP client sends those in a header).
HEADER_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0xFF, exclude_characters="\r\n"), max_size=80)


# --- bodies ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Body:
    data: bytes
    event_id: str | None  # set when the body is a JSON object with an `id` and a `type` the receiver takes
    kind: str


def _envelope_ok(value) -> str | None:
    """The event id when `value` is an object whose `id` and `type` are non-empty text (without lone
    surrogates, which no Redis key or log line can hold): the event the receiver queues."""
    if not isinstance(value, dict):
        return None
    for field in ("id", "type"):
        text = value.get(field)
        if not isinstance(text, str) or not text:
            return None
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return value["id"]


def _json_body(value, kind: str) -> Body:
    return Body(dumps(value), _envelope_ok(value), kind)


PEER_BYTES = load_peer_events()  # byte for byte, as the other projects' suites captured them
IDS = st.one_of(
    TEXT, st.sampled_from(["evt_1", "", " ", "\x00", "\ud800", "evt_\udfff", "é" * 10, "y" * 5000]), json_values(4)
)
ENVELOPES = st.builds(
    lambda id_, type_, rest: {**rest, "id": id_, "type": type_},
    IDS,
    st.one_of(st.sampled_from([e["type"] for e in BASE_EVENTS] + ["ping", "x" * 300]), IDS),
    st.dictionaries(TEXT, json_values(6), max_size=4),
)


@st.composite
def garbled(draw) -> Body:
    """A real event's bytes with a few bytes inserted, replaced or cut: what reaches JSON parsing unsigned
    or, if someone signs it, signed."""
    data = bytearray(draw(st.sampled_from([dumps(e) for e in BASE_EVENTS] + [raw for _n, raw in PEER_BYTES])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        chunk = draw(
            st.one_of(
                st.binary(max_size=6),
                st.sampled_from(
                    [
                        b"NaN",
                        b"1e400",
                        b"-Infinity",
                        b"\\ud800",
                        b"\\u0000",
                        b"\xff",
                        b"\xed\xa0\x80",
                        b"{",
                        b"]",
                        b'"',
                        b"9" * 5000,
                        b"\xef\xbb\xbf",
                    ]
                ),
            )
        )
        cut = draw(st.integers(0, 3))
        data[at : at + cut] = chunk
    return Body(bytes(data), None, "garbled")


BODIES = st.one_of(
    st.binary(max_size=300).map(lambda data: Body(data, None, "bytes")),
    json_values().map(lambda value: _json_body(value, "json")),
    ENVELOPES.map(lambda value: _json_body(value, "envelope")),
    mutated_events(bases=BASE_EVENTS + [e for _n, e in PEER_EVENTS], max_mutations=4, keep_envelope=False).map(
        lambda value: _json_body(value, "mutated event")
    ),
    st.sampled_from(PEER_BYTES).map(lambda peer: Body(peer[1], _envelope_ok(json.loads(peer[1])), "peer event")),
    garbled(),
)


# --- signatures and headers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signing:
    mode: str
    offset: int = 0  # seconds from now of the timestamp
    extra: tuple = ()  # other header items, in order, around the right signature
    position: int = 0
    text: str = ""  # the whole header, for mode "text"; what is spliced in, for "non-ascii"

    @property
    def correct(self) -> bool:
        """Signed with our secret over this very body, recently, in a header Stripe could send."""
        return self.mode in ("valid", "several")

    def header(self, body: bytes) -> str | None:
        now = int(time.time())
        if self.mode == "missing":
            return None
        if self.mode == "text":
            return self.text
        if self.mode == "other secret":
            return signature_header(body, OTHER_SECRET, now + self.offset)
        if self.mode == "other body":
            return signature_header(body + b" ", SECRET, now + self.offset)
        signed = signature_header(body, SECRET, now + self.offset)
        if self.mode in ("valid", "expired", "two headers"):
            return signed
        if self.mode == "several":  # t=..., then v1/v0/other entries with ours among them
            t, v1 = signed.split(",")
            items = list(self.extra)
            items.insert(self.position % (len(items) + 1), v1)
            return ",".join([t, *items])
        if self.mode == "non-ascii":
            at = self.position % (len(signed) + 1)
            return signed[:at] + self.text + signed[at:]
        if self.mode == "t-text":
            return f"t={self.text},{signed.split(',')[1]}"
        raise AssertionError(self.mode)


HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
OTHER_ITEMS = st.lists(
    st.one_of(
        HEX64.map(lambda h: f"v1={h}"),
        HEX64.map(lambda h: f"v0={h}"),
        st.just("v1="),
        st.builds(
            lambda k, v: f"{k}={v}",
            st.sampled_from(["v2", "x", "v1", "scheme"]),
            st.text("abcdef0123456789=", max_size=70),
        ),
    ),
    max_size=5,
)
CORRECT_SIGNINGS = st.one_of(
    st.builds(Signing, st.just("valid"), st.integers(-(TOLERANCE - 60), 600)),
    st.builds(
        Signing, st.just("several"), st.integers(-(TOLERANCE - 60), 60), OTHER_ITEMS.map(tuple), st.integers(0, 10)
    ),
)
SIGNINGS = st.one_of(
    CORRECT_SIGNINGS,
    st.builds(Signing, st.just("expired"), st.integers(-(10**9), -(TOLERANCE + 60))),
    st.builds(Signing, st.just("other secret"), st.integers(-100, 100)),
    st.builds(Signing, st.just("other body"), st.integers(-100, 100)),
    st.builds(
        Signing,
        st.just("non-ascii"),
        st.integers(-100, 100),
        st.just(()),
        st.integers(0, 200),
        st.text(st.characters(min_codepoint=0x80, max_codepoint=0xFF), min_size=1, max_size=3),
    ),
    st.builds(
        Signing, st.just("t-text"), st.just(0), st.just(()), st.just(0), HEADER_TEXT.filter(lambda t: "," not in t)
    ),
    st.builds(
        Signing,
        st.just("text"),
        text=st.one_of(
            HEADER_TEXT,
            st.sampled_from(
                ["", ",", "t=", "t=1,v1=", "v1=" + "a" * 64, "t=" + "9" * 4300 + ",v1=" + "a" * 64, "t=1" * 500]
            ),
        ),
    ),
    st.just(Signing("missing")),
    st.builds(Signing, st.just("two headers"), text=HEADER_TEXT),
)

CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "*/*",
        ]
    ),
    HEADER_TEXT,
)
# None: the client's own Content-Length (the body's length); else what the environ says instead.
# "chunked": no Content-Length at all, the server ends the stream (wsgi.input_terminated), as gunicorn does for
# Transfer-Encoding: chunked.
CONTENT_LENGTHS = st.one_of(
    st.none(),
    st.none(),
    st.just("chunked"),
    st.integers(-5, 400).map(str),
    st.sampled_from(["", "abc", "1e3", " 12", "+5", "0x10", "99999999999999999999999", str(MAX_BODY_BYTES + 1)]),
)


@dataclass(frozen=True)
class Request:
    body: Body
    signing: Signing
    content_type: str | None
    content_length: str | None


REQUESTS = st.builds(Request, BODIES, SIGNINGS, CONTENT_TYPES, CONTENT_LENGTHS)


def post(client, request: Request):
    body = request.body.data
    headers = {}
    header = request.signing.header(body)
    if header is not None:
        headers["Stripe-Signature"] = header
    if request.content_type is not None:
        headers["Content-Type"] = request.content_type
    if request.content_length == "chunked":
        overrides = {"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    elif request.content_length is not None:
        overrides = {"CONTENT_LENGTH": request.content_length}
    else:
        overrides = {}
    header_list = list(headers.items())
    if request.signing.mode == "two headers":  # another Stripe-Signature first: joined with ", " as servers do
        header_list.insert(0, ("Stripe-Signature", request.signing.text))
    return client.post(WEBHOOK, data=body, headers=header_list, environ_overrides=overrides)


def assert_answered(response, r, request: Request) -> None:
    """Only the contract's codes; a correctly signed event queued once; nothing else queued."""
    body, signing = request.body, request.signing
    assert response.status_code in STATUSES, (response.status_code, response.data[:500])
    assert response.is_json, response.data[:200]
    queued = entries(r)
    honest_length = request.content_length in (None, "chunked", str(len(body.data)))
    hypothesis.event(f"{body.kind}, {signing.mode}: {response.status_code}")
    if response.status_code != 200:
        assert queued == [], "a refused request reached the stream"
        assert list(r.scan_iter(match=f"{STREAM}:seen:*")) == []
    else:
        assert signing.correct, f"{signing.mode} accepted"
        [entry] = queued
        assert entry["payload"] == body.data  # byte for byte: what Stripe signed
        answer = response.get_json()
        assert answer["status"] == "queued" and answer["received"] is True
        assert entry["event_id"] == answer["event_id"].encode()
    if signing.correct and body.event_id is not None and honest_length:
        if len(body.data) > MAX_BODY_BYTES:
            assert response.status_code == 413
        else:
            assert response.status_code == 200, response.data[:500]
            assert response.get_json()["event_id"] == body.event_id
    elif body.event_id is None and body.kind != "garbled" and response.status_code != 413:
        assert response.status_code == 400  # not an event: malformed, whoever signed it


@fuzz_settings(max_examples=300)
@given(REQUESTS)
@example(
    Request(
        Body(b'{"id": "evt_\\u0000", "type": "invoice.paid"}', "evt_\x00", "envelope"),
        Signing("valid"),
        "application/json",
        None,
    )
)
def test_any_request_is_answered_200_400_or_413_and_only_a_signed_event_is_queued(webhook_client, r, request):
    r.flushdb()
    response = post(webhook_client, request)
    assert_answered(response, r, request)
    if response.status_code == 200:  # the same event again: a duplicate, still one entry
        again = post(webhook_client, request)
        if request.signing.correct:
            assert again.status_code == 200 and again.get_json()["status"] == "duplicate"
            assert len(entries(r)) == 1


@fuzz_settings(max_examples=20)
@given(st.sampled_from(BASE_EVENTS), st.integers(-3, 3), CORRECT_SIGNINGS, st.booleans())
def test_a_signed_body_at_the_size_limit(webhook_client, r, base, delta, signing, chunked):
    """1 MiB is the limit: a correctly signed event of exactly that size is queued, one byte more is 413,
    whether the body comes with a Content-Length or chunked (no length, the server ends the stream)."""
    r.flushdb()
    data = dumps({**base, "id": f"evt_big_{delta}"})
    data = data[:-1] + b" " * (MAX_BODY_BYTES + delta - len(data)) + b"}"
    assert len(data) == MAX_BODY_BYTES + delta
    headers = {"Stripe-Signature": signing.header(data), "Content-Type": "application/json"}
    overrides = {"wsgi.input_terminated": True, "CONTENT_LENGTH": ""} if chunked else {}
    response = webhook_client.post(WEBHOOK, data=data, headers=headers, environ_overrides=overrides)
    assert response.status_code == (200 if delta <= 0 else 413), response.data[:300]
    assert len(entries(r)) == (1 if delta <= 0 else 0)
