"""POST /webhooks/stripe: verify, dedupe, enqueue, answer in milliseconds.

This one route is answered at the WSGI level, in front of Flask (`WebhookRoute` wraps the app's `wsgi_app`):
Stripe's POSTs are nearly all the receiver's traffic, and Flask's request context, routing and response
objects cost more CPU per request than the verification and the enqueue together (bench/receiver_load.py;
the profile is in the README's Speed section). Every other path and method goes on to Flask unchanged, so a
GET here is Flask's 405. The answers are the ones Flask gave: the same statuses, JSON bodies and metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

import redis

from billing.config import Settings, scrub
from billing.event_queue import ReplicaWaitError
from billing.stripe_events import event_created, parse_envelope
from billing.vocabulary import Receipt
from receiver.group_commit import GroupCommit
from receiver.metrics import (
    ENQUEUE_FAILURES,
    EVENTS,
    REPLICA_WAIT_FAILURES,
    REQUEST_SECONDS,
    REQUESTS,
    SIGNATURE_FAILURES,
)
from receiver.signature import SignatureRejected, verify

log = logging.getLogger(__name__)

PATH = "/webhooks/stripe"
_STATUS_LINES = {
    200: "200 OK",
    400: "400 BAD REQUEST",
    405: "405 METHOD NOT ALLOWED",
    413: "413 REQUEST ENTITY TOO LARGE",
    500: "500 INTERNAL SERVER ERROR",
    503: "503 SERVICE UNAVAILABLE",
}
TOO_LARGE = "The data value transmitted exceeds the capacity limit."  # werkzeug's words, as before
NOT_ALLOWED = "The method is not allowed for the requested URL."
Answer = tuple[int, dict, list[tuple[str, str]]]


class WebhookRoute:
    """The WSGI app in front of Flask's: takes POST /webhooks/stripe itself, hands everything else on."""

    def __init__(self, flask_wsgi: Callable, settings: Settings, queue: GroupCommit, max_body_bytes: int):
        self.flask_wsgi = flask_wsgi
        self.settings = settings
        self.queue = queue
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.flask_wsgi(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":  # not counted: no webhook request
            return _respond(start_response, 405, {"error": NOT_ALLOWED}, [("Allow", "POST")])
        start = time.perf_counter()
        try:
            status, body, headers = self.answer(environ)
        except Exception:  # what Flask did with an unexpected error: log it, answer 500
            log.exception("webhook request failed")
            status, body, headers = 500, {"error": "internal error"}, []
        answer = _respond(start_response, status, body, headers)
        REQUEST_SECONDS.observe(time.perf_counter() - start)
        REQUESTS.labels(str(status)).inc()
        return answer

    def answer(self, environ: dict) -> Answer:
        payload = self.read_body(environ)
        if payload is None:
            return 413, {"error": TOO_LARGE}, []
        try:
            verify(
                payload,
                environ.get("HTTP_STRIPE_SIGNATURE"),
                self.settings.webhook_secrets,
                self.settings.webhook_tolerance,
            )
        except SignatureRejected as exc:
            SIGNATURE_FAILURES.labels(exc.reason).inc()
            return 400, {"error": exc.message, "reason": exc.reason}, []
        try:
            event = parse_envelope(payload)
        except ValueError as exc:
            return 400, {"error": f"malformed event: {exc}"}, []
        event_id, event_type = event["id"], event["type"]
        try:
            entry_id = self.queue.enqueue(event_id, event_type, event_created(event), payload)
        except redis.RedisError as exc:
            log.warning(
                "enqueue failed for %s: %s",
                event_id,
                scrub(str(exc), self.settings.redis_url),
                extra={"event_id": event_id, "event_type": event_type},
            )
            ENQUEUE_FAILURES.inc()
            if isinstance(exc, ReplicaWaitError):
                REPLICA_WAIT_FAILURES.inc()
                error = "event stored on the primary but not confirmed by its replicas; retry later"
                return 503, {"error": error}, [("Retry-After", "5")]
            return 503, {"error": "event queue unavailable; not stored, retry later"}, [("Retry-After", "5")]
        status = Receipt.QUEUED if entry_id else Receipt.DUPLICATE
        EVENTS.labels(event_type, status).inc()
        return 200, {"received": True, "status": status, "event_id": event_id, "event_type": event_type}, []

    def read_body(self, environ: dict) -> bytes | None:
        """The whole body, or None when it is over the limit, read as werkzeug reads it for Flask: a declared
        length over the limit is refused without reading; a stream the server ends itself (gunicorn's, chunked
        bodies included) is read to one byte past the limit; else the declared length (none valid: empty)."""
        stream = environ["wsgi.input"]
        try:
            length = max(0, int(environ.get("CONTENT_LENGTH") or 0))
        except ValueError:
            length = 0
        if length > self.max_body_bytes:
            return None
        if environ.get("wsgi.input_terminated"):
            payload = stream.read(self.max_body_bytes + 1)
            return None if len(payload) > self.max_body_bytes else payload
        return stream.read(length) if length else b""


def _respond(start_response: Callable, status: int, body: dict, headers: list[tuple[str, str]]) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()  # as Flask's jsonify
    start_response(
        _STATUS_LINES[status], [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers]
    )
    return [data]
