"""GET /v1/communities/<id>/subscription and /entitlements: what a community has and may use."""
from __future__ import annotations

import datetime as dt
import hmac
import re

from flask import Blueprint, abort, current_app, jsonify, request

from models.entitlements import cache_ttl, entitlements, subscription_view
from models.tables import Subscription
from receiver.metrics import CACHE_REQUESTS

bp = Blueprint("api", __name__, url_prefix="/v1")
COMMUNITY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


@bp.before_request
def require_token():
    token = current_app.config["SETTINGS"].api_token
    if not token:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = jsonify(error="missing or wrong API token: send Authorization: Bearer <API_TOKEN>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="billing"'
    return response, 401


def _community(community_id: str) -> str:
    if not COMMUNITY_ID.fullmatch(community_id):  # not match(): its $ also matches before a final newline
        abort(400, description="malformed community id: 1-128 of letters, digits, '_', '.', ':' or '-'")
    return community_id


@bp.get("/communities/<community_id>/subscription")
def subscription(community_id: str):
    sub = Subscription.get_or_none(Subscription.community_id == _community(community_id))
    if sub is None:
        return jsonify(error="no subscription for this community", community_id=community_id), 404
    return jsonify(subscription_view(sub))


@bp.get("/communities/<community_id>/entitlements")
def community_entitlements(community_id: str):
    community_id = _community(community_id)
    cache = current_app.extensions["entitlement_cache"]
    cached, generation = cache.get(community_id)
    if cached is not None:
        CACHE_REQUESTS.labels("hit").inc()
        return jsonify({**cached, "source": "cache"})
    CACHE_REQUESTS.labels("miss").inc()
    settings = current_app.config["SETTINGS"]
    # Not utcnow(), which drops the microseconds: a TTL counted from up to a second ago would keep an
    # in-grace answer cached up to a second past grace_until.
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    answer = entitlements(community_id, Subscription.get_or_none(Subscription.community_id == community_id),
                          settings.tiers, now)
    cache.put(community_id, answer, generation, cache_ttl(answer, settings.entitlement_ttl_seconds, now))
    return jsonify({**answer, "source": "database"})
