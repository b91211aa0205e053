"""GET /v1/communities/<id>/subscription and /entitlements: what a community has and may use."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import logging
import time

import peewee
from flask import Blueprint, Response, abort, current_app, g, jsonify, request
from werkzeug.routing import BaseConverter

from billing import community
from billing.config import scrub
from billing.entitlements import cache_ttl, entitlements, subscription_view
from models.tables import Subscription
from receiver.metrics import API_REQUEST_SECONDS, API_REQUESTS, API_UNMATCHED, CACHE_REQUESTS

log = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/v1")


class AnyId(BaseConverter):
    """Whatever stands between /communities/ and the last path step, '/' and newlines too, so that every
    id the rule refuses is answered 400 with the rule (werkzeug's own converters stop at '/' or '\\n': 404)."""

    regex = r"[^/][\s\S]*?"
    part_isolating = False


# Before the routes: a blueprint's deferred steps run in order when the app registers it.
bp.record_once(lambda state: state.app.url_map.converters.setdefault("anyid", AnyId))
LOOPBACK_ONLY = (
    "API_TOKEN is not set, so /v1 answers loopback clients only (127.0.0.0/8, ::1). Behind a reverse "
    "proxy on the same host every client looks local: set API_TOKEN there."
)


def is_loopback(address: str | None) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped ::ffff:127.x.y.z. Anything else, or no address, is not."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is no loopback
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_api_request() -> bool:
    return request.path == bp.url_prefix or request.path.startswith(f"{bp.url_prefix}/")


# App-wide hooks, so that they also see /v1 paths that match no route, and so that the clock starts before
# require_token (an app's own before_request functions run before its blueprints'). Flask runs after_request
# functions for every answer, those of error handlers and of unhandled exceptions (500) included.
@bp.before_app_request
def start_clock():
    if _is_api_request():
        g.api_started = time.perf_counter()


@bp.after_app_request
def count_api_request(response: Response) -> Response:
    started = g.pop("api_started", None)
    if started is not None:
        endpoint = request.endpoint.rpartition(".")[2] if request.blueprint == bp.name else API_UNMATCHED
        API_REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - started)
        API_REQUESTS.labels(endpoint, str(response.status_code)).inc()
    return response


@bp.before_request
def require_token():
    token = current_app.config["SETTINGS"].api_token
    if not token:
        if is_loopback(request.remote_addr):
            return None
        return jsonify(
            error="forbidden: /v1 answers only loopback clients while API_TOKEN is not set; "
            "set API_TOKEN and send Authorization: Bearer <API_TOKEN>"
        ), 403
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = jsonify(error="missing or wrong API token: send Authorization: Bearer <API_TOKEN>")
    response.headers["WWW-Authenticate"] = 'Bearer realm="billing"'
    return response, 401


@bp.errorhandler(peewee.DatabaseError)
def database_unavailable(exc: peewee.DatabaseError):
    """The database is down, or has no tables yet (`python -m models migrate`): 503, never a 500, and
    the cause in the log only (it names hosts and ports)."""
    settings = current_app.config["SETTINGS"]
    log.warning("/v1: database unavailable: %s: %s", type(exc).__name__, scrub(str(exc).strip(), settings.database_url))
    response = jsonify(error="database unavailable; retry later")
    response.headers["Retry-After"] = "5"
    return response, 503


def _community(community_id: str) -> str:
    """The id, or 400: the one rule of billing.community, so every id the consumer can store is readable here."""
    if not community.is_valid(community_id):
        abort(400, description=f"malformed community id: {community.RULE}")
    return community_id


@bp.get("/communities/<anyid:community_id>/subscription")
def subscription(community_id: str):
    sub = Subscription.get_or_none(Subscription.community_id == _community(community_id))
    if sub is None:
        return jsonify(error="no subscription for this community", community_id=community_id), 404
    return jsonify(subscription_view(sub))


@bp.get("/communities/<anyid:community_id>/entitlements", endpoint="entitlements")
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
    answer = entitlements(
        community_id, Subscription.get_or_none(Subscription.community_id == community_id), settings.tiers, now
    )
    cache.put(community_id, answer, generation, cache_ttl(answer, settings.entitlement_ttl_seconds, now))
    return jsonify({**answer, "source": "database"})
