"""GET /docs: the API's documentation page, Swagger UI over GET /openapi.json.

Swagger UI's JavaScript and CSS come from the flask-swagger-ui package (its dist/ folder, the upstream
build), served by this app under /docs/assets/: the page loads nothing from another host, so it works on
a machine with no way out and leaks no visit to a CDN. The page has no inline script (the start-up code
is /docs/assets/init.js), so a strict Content-Security-Policy in front of it needs no exception."""

from __future__ import annotations

import html
import importlib.metadata
import importlib.resources
import pathlib

from flask import Blueprint, Response, abort, jsonify, send_from_directory, url_for

bp = Blueprint("docs", __name__, url_prefix="/docs")

# The files of Swagger UI's dist/ the page uses, by the content type they are served with (stated here, not
# guessed from the system's MIME table, which differs between machines for .js).
ASSETS = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
INIT_JS = """\
// Starts Swagger UI in #swagger-ui over the OpenAPI document its data-openapi-url names.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    domNode: root,
    deepLinking: true,
    validatorUrl: null,  // no badge fetched from validator.swagger.io: nothing leaves the machine
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""
CACHE_SECONDS = 86400  # asset URLs carry the package's version, so a new release is fetched anew


def _swagger_ui() -> tuple[pathlib.Path, str] | None:
    """flask-swagger-ui's dist/ folder and version, or None when the package is not installed."""
    try:
        dist = pathlib.Path(str(importlib.resources.files("flask_swagger_ui") / "dist"))
        version = importlib.metadata.version("flask-swagger-ui")
    except (ModuleNotFoundError, importlib.metadata.PackageNotFoundError):
        return None
    return (dist, version) if dist.is_dir() else None


SWAGGER_UI = _swagger_ui()
UNAVAILABLE = "API docs unavailable: the flask-swagger-ui package is not installed; /openapi.json still answers"


def _asset(name: str) -> str:
    return url_for("docs.asset", name=name, v=SWAGGER_UI[1] if SWAGGER_UI else None)


@bp.get("")
def page():
    if SWAGGER_UI is None:
        return jsonify(error=UNAVAILABLE), 503
    openapi = html.escape(url_for("openapi.openapi"))
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Stripe billing webhook receiver: API docs</title>
  <link rel="stylesheet" href="{html.escape(_asset("index.css"))}">
  <link rel="stylesheet" href="{html.escape(_asset("swagger-ui.css"))}">
  <link rel="icon" type="image/png" sizes="32x32" href="{html.escape(_asset("favicon-32x32.png"))}">
  <link rel="icon" type="image/png" sizes="16x16" href="{html.escape(_asset("favicon-16x16.png"))}">
</head>
<body>
  <noscript>This page needs JavaScript. The OpenAPI document itself: <a href="{openapi}">{openapi}</a></noscript>
  <div id="swagger-ui" data-openapi-url="{openapi}"></div>
  <script src="{html.escape(_asset("swagger-ui-bundle.js"))}"></script>
  <script src="{html.escape(_asset("init.js"))}"></script>
</body>
</html>
"""
    return Response(body, content_type="text/html; charset=utf-8")


@bp.get("/assets/<name>")
def asset(name: str):
    if name == "init.js":
        response = Response(INIT_JS, content_type="text/javascript; charset=utf-8")
        response.cache_control.public = True
        response.cache_control.max_age = CACHE_SECONDS
        return response
    if name not in ASSETS:
        abort(404, description=f"no such asset: the page uses {', '.join(sorted([*ASSETS, 'init.js']))}")
    if SWAGGER_UI is None:
        return jsonify(error=UNAVAILABLE), 503
    return send_from_directory(SWAGGER_UI[0], name, mimetype=ASSETS[name], max_age=CACHE_SECONDS)
