"""/openapi.json describes the whole HTTP interface, and the live app keeps to it: schemathesis sends
generated requests to every operation of a running receiver (gunicorn, real Redis and database) and
checks that nothing answers 500 and every answer matches the document."""
from __future__ import annotations

import json
import urllib.request

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.services import service_env, start_receiver

TOKEN = "test-token"


@pytest.fixture(scope="module")
def live_receiver(redis_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openapi")
    database_url = f"sqlite:///{tmp}/billing.db"
    from models.db import migrate, open_database

    migrate(open_database(database_url))
    proc, base = start_receiver(service_env(redis_server.url, database_url, API_TOKEN=TOKEN), str(tmp), workers=2)
    yield base
    proc.stop()


def test_every_operation_keeps_to_the_document(live_receiver):
    # schemathesis' own pytest plugin does not work with this pytest; hypothesis drives each operation.
    schema = schemathesis.openapi.from_url(f"{live_receiver}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /webhooks/stripe", "GET /healthz", "GET /readyz",
                                              "GET /v1/communities/{community_id}/subscription",
                                              "GET /v1/communities/{community_id}/entitlements"}
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
        "/webhooks/stripe", "/healthz", "/readyz", "/metrics", "/openapi.json",
        "/v1/communities/{community_id}/subscription", "/v1/communities/{community_id}/entitlements"}
