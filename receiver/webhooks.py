"""POST /webhooks/stripe: verify, dedupe, enqueue, answer in milliseconds."""
from __future__ import annotations

import logging

import redis
from flask import Blueprint, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from models.config import scrub
from models.stripe_events import event_created, parse_envelope
from receiver.metrics import ENQUEUE_FAILURES, EVENTS, SIGNATURE_FAILURES, observed
from receiver.signature import SignatureRejected, verify

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


@bp.post("/webhooks/stripe")
@observed
def stripe_webhook():
    settings = current_app.config["SETTINGS"]
    payload = request.get_data(cache=False)  # raises 413 past MAX_CONTENT_LENGTH without reading on
    # A body with no Content-Length (chunked) is cut at MAX_CONTENT_LENGTH without an error: one
    # more byte on the server's own stream means the body was longer.
    if len(payload) >= current_app.config["MAX_CONTENT_LENGTH"] and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    try:
        verify(payload, request.headers.get("Stripe-Signature"), settings.webhook_secrets, settings.webhook_tolerance)
    except SignatureRejected as exc:
        SIGNATURE_FAILURES.labels(exc.reason).inc()
        return jsonify(error=exc.message, reason=exc.reason), 400
    try:
        event = parse_envelope(payload)
    except ValueError as exc:
        return jsonify(error=f"malformed event: {exc}"), 400

    try:
        entry_id = current_app.extensions["event_queue"].enqueue(
            event["id"], event["type"], event_created(event), payload
        )
    except redis.RedisError as exc:
        log.warning("enqueue failed for %s: %s", event["id"], scrub(str(exc), settings.redis_url),
                    extra={"event_id": event["id"], "event_type": event["type"]})
        ENQUEUE_FAILURES.inc()
        response = jsonify(error="event queue unavailable; not stored, retry later")
        response.headers["Retry-After"] = "5"
        return response, 503
    status = "queued" if entry_id else "duplicate"
    EVENTS.labels(event["type"], status).inc()
    return jsonify(received=True, status=status, event_id=event["id"], event_type=event["type"])
