"""GET /healthz (the process answers) and GET /readyz (Redis and the database answer)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from models.db import database_proxy

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    checks = {"redis": _check(lambda: current_app.extensions["redis"].ping()),
              "database": _check(lambda: database_proxy.execute_sql("SELECT 1"))}
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503


def _check(probe) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:  # any failure means "not ready"; say which
        return f"failed: {type(exc).__name__}: {str(exc).strip()[:200]}"
