"""The two servers bench/receiver_load.py compares ours with, run under the same gunicorn settings:

- `bare`: a Flask app that reads the body and answers a small JSON 200 (the floor: HTTP and Flask alone);
- `bare_ping`: the bare app plus one Redis round trip (PING) before it answers: the floor for any receiver
  that answers only once Redis has answered;
- `naive`: the receiver a user would write in an afternoon: stripe's `construct_event`-style verification,
  `json.loads`, EXISTS then XADD (two Redis round trips, not atomic), no metrics."""

from __future__ import annotations

import json
import os

import redis
import stripe
from flask import Flask, jsonify, request


def bare() -> Flask:
    return _bare(lambda: None)


def bare_ping() -> Flask:
    return _bare(redis.Redis.from_url(os.environ["REDIS_URL"]).ping)


def _bare(before_answering) -> Flask:
    app = Flask(__name__)

    @app.post("/webhooks/stripe")
    def webhook():
        request.get_data()
        before_answering()
        return jsonify(received=True)

    return app


def naive() -> Flask:
    app = Flask(__name__)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    secret = os.environ["STRIPE_WEBHOOK_SECRET"].split(",")[0]

    @app.post("/webhooks/stripe")
    def webhook():
        payload = request.get_data()
        try:
            stripe.WebhookSignature.verify_header(payload, request.headers.get("Stripe-Signature"), secret, 300)
        except stripe.SignatureVerificationError:
            return jsonify(error="bad signature"), 400
        event = json.loads(payload)
        if client.exists(f"seen:{event['id']}"):
            return jsonify(received=True, status="duplicate")
        client.xadd("naive:events", {"event_id": event["id"], "event_type": event["type"], "payload": payload})
        return jsonify(received=True, status="queued")

    return app
