"""GET /metrics of a live receiver (gunicorn, 2 workers, real Redis): every answer of POST /webhooks/stripe
is counted once, whichever worker gave it, and whichever worker answers the scrape gives the exact sum."""

from __future__ import annotations

import collections
import concurrent.futures
import http.client
import os
import re
import signal
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import pytest

from harness import free_port, service_env, start_receiver, wait_for
from receiver import MAX_BODY_BYTES
from receiver.sample_events import EVENT_TYPES
from tests.receiver.metrics_helpers import ACCESS_LINE, scrape, value
from tests.receiver_helpers import WEBHOOK, event_bytes
from tests.stripe_helpers import sign

METRICS_DIR_PREFIX = "billing-receiver-metrics-"


@pytest.fixture
def tmp_dir(tmp_path):
    """The receivers' TMPDIR: where their multiprocess metrics directories go, and only theirs."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


@pytest.fixture
def receiver_env(redis_url, tmp_path, tmp_dir):
    return service_env(redis_url, f"sqlite:///{tmp_path}/billing.db", TMPDIR=str(tmp_dir))


def post(base: str, body: bytes, headers: dict) -> int:
    """POST on a connection of its own (no keep-alive), so any worker may take it."""
    request = urllib.request.Request(base + WEBHOOK, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def post_too_big(base: str) -> int:
    """Announce a body of 2 MiB and send 64 KiB of it: the receiver answers without waiting for the rest."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest("POST", WEBHOOK)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(2 * MAX_BODY_BYTES))
        conn.endheaders()
        conn.send(b" " * 65536)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def access_pids(output: str, method: str, path: str) -> set[int]:
    """The pids of the workers that answered `method path`, from gunicorn's access log."""
    return {
        int(m["pid"])
        for m in map(ACCESS_LINE.search, output.splitlines())
        if m and m["method"] == method and m["path"] == path
    }


def worker_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", output)]


def metrics_dirs(tmp_dir) -> list[str]:
    return sorted(name for name in os.listdir(tmp_dir) if name.startswith(METRICS_DIR_PREFIX))


def test_counts_are_exact_summed_over_both_workers(receiver_env, tmp_path, tmp_dir):
    # gunicorn's own logger, which logs webhooks answered 200 too: which worker took them is in its lines.
    env = {**receiver_env, "GUNICORN_CMD_ARGS": "--logger-class gunicorn.glogging.Logger"}
    proc, base = start_receiver(env, str(tmp_path), workers=2)
    try:
        # Signed events, eight at a time, each on its own connection, until both workers have taken some.
        queued: collections.Counter[str] = collections.Counter()
        bodies: list[tuple[str, bytes]] = []
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for round_no in range(100):
                batch = [
                    event_bytes(EVENT_TYPES[(round_no * 8 + i) % len(EVENT_TYPES)], f"m{round_no}-{i}")
                    for i in range(8)
                ]
                statuses = list(pool.map(lambda eb: post(base, eb[1], sign(eb[1])), batch))
                assert statuses == [200] * 8
                for event, body in batch:
                    queued[event["type"]] += 1
                    bodies.append((event["type"], body))
                if len(access_pids(proc.output(), "POST", WEBHOOK)) == 2:
                    break
        sent = sum(queued.values())
        assert len(access_pids(proc.output(), "POST", WEBHOOK)) == 2, "one worker took every request"
        assert access_pids(proc.output(), "POST", WEBHOOK) <= set(worker_pids(proc.output()))

        duplicates = collections.Counter(event_type for event_type, _ in bodies[:3])
        for _, body in bodies[:3]:  # delivered again, as Stripe retries: answered 200, not queued twice
            assert post(base, body, sign(body)) == 200

        _, body = event_bytes("invoice.paid", "bad")
        refused = {
            "missing": [post(base, body, {"Content-Type": "application/json"}) for _ in range(2)],
            "mismatch": [post(base, body, sign(body, secret="whsec_not_ours")) for _ in range(3)],
            "expired": [post(base, body, sign(body, timestamp=int(time.time()) - 3600))],
            "malformed": [post(base, body, {"Stripe-Signature": "not-a-signature"})],
        }
        assert all(status == 400 for statuses in refused.values() for status in statuses)
        assert post(base, b"not json", sign(b"not json")) == 400  # signed, but no event: not a signature failure
        assert post_too_big(base) == 413

        # Scrape until both workers have answered a scrape: every answer is the same, exact sum.
        answers = []
        for _ in range(200):
            answers.append(scrape(base))
            if len(access_pids(proc.output(), "GET", "/metrics")) == 2:
                break
        assert len(access_pids(proc.output(), "GET", "/metrics")) == 2, "one worker answered every scrape"

        signature_failures = sum(len(statuses) for statuses in refused.values())
        for samples in answers:
            assert value(samples, "billing_webhook_requests_total", status="200") == sent + 3
            assert value(samples, "billing_webhook_requests_total", status="400") == signature_failures + 1
            assert value(samples, "billing_webhook_requests_total", status="413") == 1
            assert value(samples, "billing_webhook_requests_total", status="503") == 0
            assert value(samples, "billing_webhook_request_duration_seconds_count") == sent + 3 + signature_failures + 2
            assert value(samples, "billing_webhook_request_duration_seconds_bucket", le="+Inf") == value(
                samples, "billing_webhook_request_duration_seconds_count"
            )
            for reason, statuses in refused.items():
                assert value(samples, "billing_webhook_signature_failures_total", reason=reason) == len(statuses)
            for event_type in EVENT_TYPES:
                assert (
                    value(samples, "billing_webhook_events_total", event_type=event_type, result="queued")
                    == queued[event_type]
                )
                assert (
                    value(samples, "billing_webhook_events_total", event_type=event_type, result="duplicate")
                    == duplicates[event_type]
                )
            assert value(samples, "billing_webhook_enqueue_failures_total") == 0
        assert len(metrics_dirs(tmp_dir)) == 1
    finally:
        proc.stop()
    assert metrics_dirs(tmp_dir) == []  # the server removed its directory on the way out


def test_a_replaced_worker_keeps_its_counts(receiver_env, tmp_path):
    proc, base = start_receiver(receiver_env, str(tmp_path), workers=2)
    try:
        for n in range(10):
            _, body = event_bytes("invoice.paid", f"r{n}")
            assert post(base, body, sign(body)) == 200
        served = access_pids(proc.output(), "POST", WEBHOOK)
        for pid in served:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(proc.output())) == 2 + len(served), what="gunicorn to replace the workers")
        wait_for(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, what="the receiver")
        samples = scrape(base)
        assert value(samples, "billing_webhook_requests_total", status="200") == 10
        assert value(samples, "billing_webhook_events_total", event_type="invoice.paid", result="queued") == 10
    finally:
        proc.stop()


def test_redis_down_is_counted_as_503_and_enqueue_failure(tmp_path, tmp_dir):
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = service_env(unreachable, f"sqlite:///{tmp_path}/billing.db", TMPDIR=str(tmp_dir))
    proc, base = start_receiver(env, str(tmp_path), workers=2)
    try:
        for n in range(3):
            _, body = event_bytes("invoice.paid", f"d{n}")
            assert post(base, body, sign(body)) == 503
        samples = scrape(base)
        assert value(samples, "billing_webhook_requests_total", status="503") == 3
        assert value(samples, "billing_webhook_requests_total", status="200") == 0
        assert value(samples, "billing_webhook_enqueue_failures_total") == 3
        assert value(samples, "billing_webhook_request_duration_seconds_count") == 3
        assert not any(v for (name, _), v in samples.items() if name == "billing_webhook_events_total")
    finally:
        proc.stop()


def test_two_receivers_on_one_machine_count_only_their_own(receiver_env, tmp_path, tmp_dir):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # started at once, with the same environment
        (first, first_base), (second, second_base) = pool.map(
            lambda _: start_receiver(receiver_env, str(tmp_path), workers=2), range(2)
        )
    try:
        assert len(metrics_dirs(tmp_dir)) == 2  # a directory each
        for base, count in ((first_base, 2), (second_base, 5)):
            for n in range(count):
                _, body = event_bytes("checkout.session.completed", f"two-{count}-{n}")
                assert post(base, body, sign(body)) == 200
        for base, count in ((first_base, 2), (second_base, 5)):
            samples = scrape(base)
            assert value(samples, "billing_webhook_requests_total", status="200") == count
            assert (
                value(samples, "billing_webhook_events_total", event_type="checkout.session.completed", result="queued")
                == count
            )
    finally:
        first.stop()
        second.stop()
    assert metrics_dirs(tmp_dir) == []
