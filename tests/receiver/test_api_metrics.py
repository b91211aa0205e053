"""/v1 request rate and latency: billing_api_requests_total{endpoint,status} and
billing_api_request_duration_seconds{endpoint}, labelled by route name, never by community id. Every answer
counts (401, 403, 400, 404, 503 and paths that match no route too), in-process and summed over the gunicorn
workers of a live receiver; the live receiver also says which release it runs (billing_build_info)."""

from __future__ import annotations

import importlib.metadata
import platform
import urllib.error
import urllib.request

from prometheus_client import REGISTRY

from billing.config import Settings
from harness import SECRET, service_env, start_receiver
from models.db import database_proxy
from models.tables import Subscription
from receiver import create_app
from tests.receiver.metrics_helpers import ACCESS_LINE, scrape, value

V1 = "/v1/communities"
TOKEN = "api-metrics-token"
ENDPOINTS = {"subscription", "entitlements", "unmatched"}


def counts() -> dict[tuple[str, str], float]:
    """billing_api_requests_total by (endpoint, status), and the histograms' counts as (endpoint, "seconds")."""
    found = {}
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "billing_api_requests_total":
                found[sample.labels["endpoint"], sample.labels["status"]] = sample.value
            elif sample.name == "billing_api_request_duration_seconds_count":
                found[sample.labels["endpoint"], "seconds"] = sample.value
    return found


def increase(before: dict, after: dict) -> dict:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def test_every_answer_is_counted_by_route_and_status(make_client):
    Subscription.create(community_id="known", tier="premium", status="active")
    client = make_client(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = counts()
    assert client.get(f"{V1}/known/subscription", headers=auth).status_code == 200
    assert client.get(f"{V1}/unknown-1/subscription", headers=auth).status_code == 404
    assert client.get(f"{V1}/unknown-2/subscription", headers=auth).status_code == 404
    assert client.get(f"{V1}/a:b/subscription", headers=auth).status_code == 400
    for n in range(3):
        assert client.get(f"{V1}/c{n}/entitlements", headers=auth).status_code == 200
    assert client.get(f"{V1}/known/entitlements").status_code == 401
    assert client.get(f"{V1}/known/entitlements", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get(f"{V1}/known/nothing-here", headers=auth).status_code == 404
    assert client.post(f"{V1}/known/entitlements", headers=auth).status_code == 405
    assert client.get("/healthz").status_code == 200  # not /v1: not counted here
    assert increase(before, counts()) == {
        ("subscription", "200"): 1,
        ("subscription", "404"): 2,
        ("subscription", "400"): 1,
        ("subscription", "seconds"): 4,
        ("entitlements", "200"): 3,
        ("entitlements", "401"): 2,
        ("entitlements", "seconds"): 5,
        ("unmatched", "404"): 1,
        ("unmatched", "405"): 1,
        ("unmatched", "seconds"): 2,
    }


def test_loopback_only_refusals_are_counted(make_client):
    client = make_client(api_token="")
    before = counts()
    assert client.get(f"{V1}/c1/subscription", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 403
    assert client.get(f"{V1}/c1/entitlements", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert increase(before, counts()) == {
        ("subscription", "403"): 1,
        ("subscription", "seconds"): 1,
        ("entitlements", "200"): 1,
        ("entitlements", "seconds"): 1,
    }


def test_an_unexpected_error_is_counted_as_500(make_client, monkeypatch):
    Subscription.create(community_id="known", tier="premium", status="active")
    client = make_client(api_token="")

    def broken(_sub):
        raise RuntimeError("a bug")

    monkeypatch.setattr("receiver.api.subscription_view", broken)
    before = counts()
    assert client.get(f"{V1}/known/subscription").status_code == 500
    assert increase(before, counts()) == {("subscription", "500"): 1, ("subscription", "seconds"): 1}


def test_database_down_is_counted_as_503(redis_url, tmp_path):
    settings = Settings(webhook_secrets=(SECRET,), redis_url=redis_url, database_url=f"sqlite:///{tmp_path}/empty.db")
    app = create_app(settings)
    client = app.test_client()
    try:
        before = counts()
        assert client.get(f"{V1}/c1/subscription").status_code == 503
        assert client.get(f"{V1}/c1/entitlements").status_code == 503
    finally:
        app.extensions["redis"].close()
        database_proxy.initialize(None)
    assert increase(before, counts()) == {
        ("subscription", "503"): 1,
        ("subscription", "seconds"): 1,
        ("entitlements", "503"): 1,
        ("entitlements", "seconds"): 1,
    }


def test_labels_never_carry_an_id(make_client):
    client = make_client(api_token="")
    for n in range(20):
        client.get(f"{V1}/id-{n}/entitlements")
        client.get(f"{V1}/id-{n}/whatever/{n}")
    labels = {key for key in counts()}
    assert {endpoint for endpoint, _ in labels} <= ENDPOINTS
    assert {status for _, status in labels} <= {"seconds", "200", "400", "401", "403", "404", "405", "500", "503"}


def test_series_exist_from_the_start():
    """At 0 before any request, so that rate() and alerts see the first one."""
    found = counts()
    for endpoint in ("subscription", "entitlements"):
        assert (endpoint, "seconds") in found
        for status in ("200", "400", "401", "403", "404", "503"):
            assert (endpoint, status) in found


# --- a live receiver: every gunicorn worker counts, any worker's /metrics answers the sum ---------------------


def get(url: str, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def v1_pids(output: str) -> set[int]:
    """The pids of the workers that answered a /v1 request, from gunicorn's access log."""
    return {int(m["pid"]) for m in map(ACCESS_LINE.search, output.splitlines()) if m and m["path"].startswith("/v1/")}


def test_counts_are_summed_over_the_workers_of_a_live_receiver(redis_url, sqlite_url, tmp_path):
    proc, base = start_receiver(service_env(redis_url, sqlite_url, API_TOKEN=TOKEN), str(tmp_path), workers=2)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        sent = {("entitlements", "200"): 0, ("subscription", "404"): 0, ("entitlements", "401"): 0}
        for n in range(100):  # each on a connection of its own, until both workers have answered /v1
            assert get(f"{base}{V1}/live{n}/entitlements", auth) == 200
            assert get(f"{base}{V1}/live{n}/subscription", auth) == 404
            assert get(f"{base}{V1}/live{n}/entitlements") == 401
            for key in sent:
                sent[key] += 1
            if len(v1_pids(proc.output())) == 2:
                break
        assert len(v1_pids(proc.output())) == 2, "one worker took every request"
        samples = scrape(base)
        for (endpoint, status), count in sent.items():
            assert value(samples, "billing_api_requests_total", endpoint=endpoint, status=status) == count
        assert (
            value(samples, "billing_api_request_duration_seconds_count", endpoint="entitlements")
            == 2 * sent["entitlements", "200"]
        )
        assert (
            value(samples, "billing_api_request_duration_seconds_count", endpoint="subscription")
            == sent["subscription", "404"]
        )
        assert (
            value(samples, "billing_api_request_duration_seconds_bucket", endpoint="subscription", le="+Inf")
            == sent["subscription", "404"]
        )

        build = [(dict(labels), v) for (name, labels), v in samples.items() if name == "billing_build_info"]
        assert build == [
            (
                {"version": importlib.metadata.version("stripe-billing-pipeline"), "python": platform.python_version()},
                1.0,
            )
        ], "one sample, whatever the workers"
    finally:
        proc.stop()
