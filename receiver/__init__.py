"""The receiver: a Flask app that takes Stripe's signed webhooks and queues them on a Redis Stream."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from billing.config import Settings
from billing.event_queue import EventQueue
from billing.redis_io import connect_redis
from models.db import database_proxy, open_database
from receiver.entitlement_cache import EntitlementCache
from receiver.group_commit import GroupCommit

MAX_BODY_BYTES = 1024 * 1024
log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    """The app factory. Settings come from the environment unless a test passes its own."""
    settings = settings or Settings.from_env()
    settings.require_webhook_secrets()
    app = Flask(__name__)
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=MAX_BODY_BYTES)

    # With REDIS_MIN_REPLICAS, an enqueue's answer may wait REDIS_WAIT_MS for the replicas on top of the 0.5 s.
    wait = settings.redis_wait_ms / 1000 if settings.redis_min_replicas else 0
    client = connect_redis(settings.redis_url, timeout=0.5 + wait)
    app.extensions["redis"] = client
    app.extensions["event_queue"] = EventQueue(
        client, settings.keys, settings.dedupe_ttl_seconds, settings.redis_min_replicas, settings.redis_wait_ms
    )
    app.extensions["entitlement_cache"] = EntitlementCache(client, settings.keys)
    open_database(settings.database_url)

    # Imported here, not at the top: these import prometheus_client, which must not be imported before
    # `python -m receiver serve` has set PROMETHEUS_MULTIPROC_DIR (see receiver/serve.py).
    from receiver import api, docs, health, metrics, openapi, webhooks

    app.register_blueprint(health.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(metrics.bp)
    # POST /webhooks/stripe is answered in front of Flask (see receiver/webhooks.py); the rest is Flask's.
    app.wsgi_app = webhooks.WebhookRoute(
        app.wsgi_app, settings, GroupCommit(app.extensions["event_queue"]), MAX_BODY_BYTES
    )
    if not settings.api_token:
        log.warning(api.LOOPBACK_ONLY)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=exc.description), exc.code

    @app.teardown_appcontext
    def close_database(_exc):
        if not database_proxy.is_closed():
            database_proxy.close()

    return app
