"""GET /healthz (the process answers) and GET /readyz (Redis and the database answer)."""

from __future__ import annotations

import logging
import socket

import redis
from flask import Blueprint, current_app, jsonify

from billing.config import scrub
from models.db import database_proxy

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = {
        "redis": _check("redis", lambda: current_app.extensions["redis"].ping()),
        "database": _check("database", lambda: database_proxy.execute_sql("SELECT 1")),
    }
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503


def _check(name: str, probe) -> str:
    """ "ok", or "failed: <kind of error>". Only the kind: the answer is public (probes, load balancers),
    and a driver's message names hosts, ports, users, paths. The log gets the message, without passwords."""
    try:
        probe()
        return "ok"
    except Exception as exc:  # any failure means "not ready"; say which, and what kind
        settings = current_app.config["SETTINGS"]
        log.warning(
            "readyz: %s check failed: %s: %s",
            name,
            type(exc).__name__,
            scrub(str(exc).strip(), settings.redis_url, settings.database_url),
        )
        return f"failed: {_kind(exc)}"


def _kind(exc: BaseException) -> str:
    if isinstance(exc, (redis.TimeoutError, socket.timeout)) or "timeout expired" in str(exc):  # libpq's words
        return "timeout"
    return type(exc).__name__
