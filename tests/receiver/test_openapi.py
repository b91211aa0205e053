"""/openapi.json describes the whole HTTP interface, and the live app keeps to it: schemathesis sends
generated requests to every operation of a running receiver (gunicorn, real Redis and database) and
checks that nothing answers 500 and every answer matches the document."""

from __future__ import annotations

import http.client
import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from harness import service_env, start_receiver

TOKEN = "test-token"


@pytest.fixture(scope="module")
def live_receiver(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    database_url = f"sqlite:///{tmp}/billing.db"
    from models.db import open_database
    from models.migrations import migrate

    migrate(open_database(database_url))
    proc, base = start_receiver(service_env(redis_server.url, database_url, API_TOKEN=TOKEN), str(tmp), workers=2)
    yield base
    proc.stop()


def test_every_operation_keeps_to_the_document(live_receiver):
    # schemathesis' own pytest plugin does not work with this pytest; hypothesis drives each operation.
    schema = schemathesis.openapi.from_url(f"{live_receiver}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /webhooks/stripe",
        "GET /healthz",
        "GET /readyz",
        "GET /docs",
        "GET /docs/assets/{name}",
        "GET /v1/communities/{community_id}/subscription",
        "GET /v1/communities/{community_id}/entitlements",
    }
    for operation in operations:
        headers = {"Authorization": f"Bearer {TOKEN}"} if operation.path.startswith("/v1") else {}
        # No schema can express a valid HMAC signature, so generated webhooks are rightly refused (400):
        # for that operation only, "schema-valid data must be accepted" does not apply.
        excluded = [positive_data_acceptance] if operation.path == "/webhooks/stripe" else []

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def keeps_to_the_document(case):
            case.call_and_validate(headers=headers, excluded_checks=excluded)

        keeps_to_the_document()


def test_the_document_lists_the_whole_interface(live_receiver):
    document = json.load(urllib.request.urlopen(f"{live_receiver}/openapi.json"))
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/webhooks/stripe",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/docs/assets/{name}",
        "/v1/communities/{community_id}/subscription",
        "/v1/communities/{community_id}/entitlements",
    }


@pytest.mark.parametrize("community_id", [".", "..", "...", ".-_", "x" * 128, "-"])
def test_ids_that_look_like_path_steps_keep_to_the_document(live_receiver, community_id):
    """'.' and '..' are valid ids (billing.community), which an HTTP client (requests, here) resolves as
    path steps: the 404 that follows is in the document. Percent-encoded, or sent as they are by a
    client that does not resolve them, they read the community."""
    schema = schemathesis.openapi.from_url(f"{live_receiver}/openapi.json")
    for operation in [result.ok() for result in schema.get_all_operations()]:
        if not operation.path.startswith("/v1"):
            continue
        case = operation.Case(path_parameters={"community_id": community_id})
        case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
    host, port = live_receiver.removeprefix("http://").split(":")
    for sent in {community_id, community_id.replace(".", "%2E")}:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", f"/v1/communities/{sent}/entitlements", headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        assert response.status == 200, (sent, response.status)
        assert json.loads(response.read())["community_id"] == community_id
        conn.close()
