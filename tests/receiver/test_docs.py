"""GET /docs: Swagger UI over /openapi.json, every script, style and icon served by the app itself from the
installed flask-swagger-ui package, with the right content types, and nothing loaded from another host."""

from __future__ import annotations

import html.parser
import importlib.metadata
import importlib.resources
import pathlib
import socket
import urllib.parse

import pytest

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class References(html.parser.HTMLParser):
    """Every URL the page makes the browser load or link to, and the element attributes that carry them."""

    def __init__(self):
        super().__init__()
        self.loaded: list[str] = []
        self.linked: list[str] = []
        self.openapi_url: str | None = None
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if attrs.get("src"):
                self.loaded.append(attrs["src"])
        elif tag == "link" and attrs.get("href"):
            self.loaded.append(attrs["href"])
        elif tag == "a" and attrs.get("href"):
            self.linked.append(attrs["href"])
        if "data-openapi-url" in attrs:
            self.openapi_url = attrs["data-openapi-url"]

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.fixture
def no_network(monkeypatch):
    """Any connection to an address that is not on this machine fails the test."""
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
            pytest.fail(f"/docs reached out to {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture
def offline_client(make_app, no_network):
    """The receiver's app (make_app: its docs need no database), any connection to another host failing the test."""
    return make_app().test_client()


def page(client) -> References:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html" and response.mimetype_params["charset"] == "utf-8"
    refs = References()
    refs.feed(response.get_data(as_text=True))
    return refs


def test_the_page_shows_the_openapi_document(offline_client):
    refs = page(offline_client)
    assert refs.openapi_url == "/openapi.json"
    assert "/openapi.json" in refs.linked  # the <noscript> link
    assert offline_client.get(refs.openapi_url).is_json
    assert refs.inline_scripts == 0  # the start-up code is a file: a strict CSP needs no 'unsafe-inline'


def test_everything_the_page_loads_is_served_here_with_its_content_type(offline_client):
    refs = page(offline_client)
    paths = [urllib.parse.urlsplit(url) for url in refs.loaded]
    assert all(not url.scheme and not url.netloc and url.path.startswith("/docs/assets/") for url in paths), refs.loaded
    assert {pathlib.PurePath(url.path).name for url in paths} >= {"swagger-ui-bundle.js", "swagger-ui.css", "init.js"}
    for url in refs.loaded:
        response = offline_client.get(url)
        assert response.status_code == 200, url
        assert response.mimetype == CONTENT_TYPES[pathlib.PurePath(urllib.parse.urlsplit(url).path).suffix], url
        assert response.get_data(), url
        assert response.cache_control.max_age, url


def test_swagger_ui_comes_from_the_installed_package(offline_client):
    dist = pathlib.Path(str(importlib.resources.files("flask_swagger_ui") / "dist"))
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert offline_client.get(f"/docs/assets/{name}").get_data() == (dist / name).read_bytes()
    assert b"SwaggerUIBundle" in offline_client.get("/docs/assets/swagger-ui-bundle.js").get_data()
    # Swagger UI 5 or later: 4 and earlier cannot show an OpenAPI 3.1 document.
    assert int(importlib.metadata.version("flask-swagger-ui").split(".")[0]) >= 5


def test_the_start_up_script_reads_the_document_url_from_the_page_and_validates_nothing_online(offline_client):
    script = offline_client.get("/docs/assets/init.js").get_data(as_text=True)
    assert "dataset.openapiUrl" in script and "validatorUrl: null" in script
    assert "http" not in script


def test_other_names_are_not_served(offline_client):
    for name in ("index.html", "oauth2-redirect.html", "LICENSE", "..%2F..%2Fdocs.py", "swagger-ui.js.map"):
        response = offline_client.get(f"/docs/assets/{name}")
        assert response.status_code == 404, name
        assert response.is_json


def test_without_the_package_docs_answer_503_and_the_document_still_answers(offline_client, monkeypatch):
    monkeypatch.setattr("receiver.docs.SWAGGER_UI", None)
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js"):
        response = offline_client.get(path)
        assert response.status_code == 503 and response.is_json, path
        assert "flask-swagger-ui" in response.get_json()["error"]
    assert offline_client.get("/openapi.json").status_code == 200
