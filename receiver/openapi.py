"""GET /openapi.json: the OpenAPI 3 document of the receiver's whole HTTP interface."""

from __future__ import annotations

from flask import Blueprint, jsonify

from billing import community
from billing.vocabulary import Receipt, Status
from receiver import docs

bp = Blueprint("openapi", __name__)

_TIME = {"type": ["string", "null"], "format": "date-time", "example": "2026-03-16T11:03:41Z"}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


COMMUNITY = {
    "name": "community_id",
    "in": "path",
    "required": True,
    "description": community.RULE,
    "schema": {"type": "string", "pattern": community.PATTERN, "minLength": 1, "maxLength": community.MAX_LENGTH},
}
V1_ERRORS = {
    "400": _json(_ref("Error"), f"malformed community id: {community.RULE}"),
    "401": _json(_ref("Error"), "API_TOKEN is set and the bearer token is missing or wrong"),
    "403": _json(_ref("Error"), "API_TOKEN is not set and the client is not on loopback"),
    "503": _json(_ref("Error"), "the database is unavailable (and the answer was not cached)"),
}
# '.' and '..' are valid ids, but an HTTP client resolves them as path steps (RFC 3986), so the request
# names another path: send them percent-encoded (%2E, %2E%2E).
DOT_IDS = "a community id of '.' or '..' not percent-encoded (%2E): the client took it for a path step"

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "Stripe billing webhook receiver",
        "version": "1",
        "description": "Takes Stripe's signed webhooks onto a Redis Stream; answers what a community may use.",
    },
    "paths": {
        "/webhooks/stripe": {
            "post": {
                "summary": "A Stripe event, signed (Stripe-Signature)",
                "parameters": [
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "example": "t=1700000000,v1=5257a869e7...",
                    }
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": _json(_ref("WebhookAccepted"), "the event is in the stream (or was already)"),
                    "400": _json(_ref("Error"), "missing, malformed, wrong or expired signature; malformed event"),
                    "413": _json(_ref("Error"), "body over 1 MiB"),
                    "503": _json(_ref("Error"), "Redis unreachable: not stored, Stripe retries"),
                },
            }
        },
        "/healthz": {
            "get": {"summary": "The process answers", "responses": {"200": _json({"type": "object"}, "alive")}}
        },
        "/readyz": {
            "get": {
                "summary": "Redis and the database answer",
                "responses": {
                    "200": _json(_ref("Readiness"), "ready"),
                    "503": _json(_ref("Readiness"), "a dependency failed"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, summed over all the server's workers",
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
        },
        "/docs": {
            "get": {
                "summary": "This document as a page to read and try (Swagger UI)",
                "responses": {
                    "200": {
                        "description": "HTML; its scripts and styles come from /docs/assets, nothing from another host",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    "503": _json(_ref("Error"), "the flask-swagger-ui package is not installed"),
                },
            }
        },
        "/docs/assets/{name}": {
            "get": {
                "summary": "The docs page's scripts, styles and icons",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["init.js", *sorted(docs.ASSETS)]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file, cacheable",
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted({"text/javascript", *docs.ASSETS.values()})
                        },
                    },
                    "404": _json(_ref("Error"), "no such asset"),
                    "503": _json(_ref("Error"), "the flask-swagger-ui package is not installed"),
                },
            }
        },
        "/v1/communities/{community_id}/subscription": {
            "get": {
                "summary": "The community's subscription as stored",
                "parameters": [COMMUNITY],
                "security": [{"bearer": []}, {}],
                "responses": {
                    "200": _json(_ref("Subscription"), "the subscription"),
                    "404": _json(_ref("Error"), f"no subscription; or {DOT_IDS}"),
                    **V1_ERRORS,
                },
            }
        },
        "/v1/communities/{community_id}/entitlements": {
            "get": {
                "summary": "What the community may use now (starter when it has no subscription)",
                "parameters": [COMMUNITY],
                "security": [{"bearer": []}, {}],
                "responses": {
                    "200": _json(_ref("Entitlements"), "effective entitlements"),
                    "404": _json(_ref("Error"), DOT_IDS),
                    **V1_ERRORS,
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "required on /v1 when API_TOKEN is set; without "
                "API_TOKEN, /v1 answers loopback clients only",
            }
        },
        "schemas": {
            "Error": _ERROR,
            "WebhookAccepted": {
                "type": "object",
                "required": ["received", "status", "event_id", "event_type"],
                "properties": {
                    "received": {"const": True},
                    "status": {"enum": list(Receipt)},
                    "event_id": {"type": "string"},
                    "event_type": {"type": "string"},
                },
            },
            "Readiness": {
                "type": "object",
                "required": ["status", "checks"],
                "properties": {
                    "status": {"enum": ["ready", "unavailable"]},
                    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
            "Subscription": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "community_id",
                    "tier",
                    "status",
                    "stripe_customer_id",
                    "stripe_subscription_id",
                    "grace_until",
                    "current_period_start",
                    "current_period_end",
                    "updated_at",
                ],
                "properties": {
                    "community_id": {"type": "string"},
                    "tier": {"type": "string"},
                    "status": {"enum": list(Status)},
                    "stripe_customer_id": {"type": ["string", "null"]},
                    "stripe_subscription_id": {"type": ["string", "null"]},
                    "grace_until": _TIME,
                    "current_period_start": _TIME,
                    "current_period_end": _TIME,
                    "updated_at": _TIME,
                },
            },
            "Entitlements": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "community_id",
                    "tier",
                    "status",
                    "max_members",
                    "features",
                    "in_grace_period",
                    "grace_until",
                    "source",
                ],
                "properties": {
                    "community_id": {"type": "string"},
                    "tier": {"type": "string"},
                    "status": {"enum": [*Status, None]},
                    "max_members": {"type": ["integer", "null"], "description": "null: unlimited"},
                    "features": {"type": "array", "items": {"type": "string"}},
                    "in_grace_period": {"type": "boolean"},
                    "grace_until": _TIME,
                    "source": {"enum": ["cache", "database"]},
                },
            },
        },
    },
}


@bp.get("/openapi.json")
def openapi():
    return jsonify(DOCUMENT)
