"""The receiver as it runs: `python -m receiver serve` (gunicorn) and `python -m receiver send`."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from urllib.parse import urlsplit

import pytest

from billing.stripe_events import read_facts
from harness import REPO, free_port, service_env, start_receiver
from receiver import MAX_BODY_BYTES
from receiver.sample_events import API_VERSIONS, CURRENT_API_VERSION, EVENT_TYPES
from tests.receiver_helpers import STREAM, WEBHOOK, entries, event_bytes
from tests.stripe_helpers import sign


@pytest.fixture(scope="module")
def live(redis_server, tmp_path_factory):
    """One receiver (2 gunicorn workers) for the module; each test's `redis_url` flushes its Redis."""
    log_dir = tmp_path_factory.mktemp("receiver")
    proc, base = start_receiver(service_env(redis_server.url, f"sqlite:///{log_dir}/x.db"), str(log_dir), workers=2)
    yield base
    proc.stop()


def connection(base: str, timeout: float = 10) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def post(base: str, body: bytes, headers: dict) -> tuple[int, dict]:
    conn = connection(base)
    try:
        conn.request("POST", WEBHOOK, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def run_module(*args: str, env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_twenty_concurrent_deliveries_of_one_event_queue_it_once(live, r):
    event, body = event_bytes("invoice.paid")
    headers = sign(body)
    start = threading.Barrier(20)
    results: list[tuple[int, dict]] = []
    errors: list[BaseException] = []

    def deliver():
        try:
            start.wait(timeout=10)
            results.append(post(live, body, headers))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert [status for status, _ in results] == [200] * 20
    assert Counter(answer["status"] for _, answer in results) == {"queued": 1, "duplicate": 19}
    assert {answer["event_id"] for _, answer in results} == {event["id"]}
    assert [e["payload"] for e in entries(r)] == [body]


def assert_too_large(conn, framing: tuple[str, str], send_body) -> None:
    """POST a badly signed body framed by `framing` (sent by `send_body(conn)`) and expect a 413 JSON answer."""
    try:
        conn.putrequest("POST", WEBHOOK)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Stripe-Signature", "t=1,v1=" + "0" * 64)
        conn.putheader(*framing)
        conn.endheaders()
        send_body(conn)
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read())["error"]
    finally:
        conn.close()


def test_oversized_body_is_refused_before_it_is_all_sent(live, r):
    conn = connection(live, timeout=5)  # were the server to wait for the whole body, this times out
    assert_too_large(
        conn, ("Content-Length", str(2 * MAX_BODY_BYTES)), lambda c: c.send(b" " * 65536)
    )  # 64 KiB of the announced 2 MiB
    assert r.xlen(STREAM) == 0


def test_oversized_chunked_body_is_413(live, r):
    """No Content-Length to judge by: the limit holds on the bytes themselves."""

    def send_chunks(conn):
        chunk = b" " * 65536
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):  # 1 MiB + 64 KiB
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")

    assert_too_large(connection(live), ("Transfer-Encoding", "chunked"), send_chunks)
    assert r.xlen(STREAM) == 0


def test_chunked_body_within_the_limit_is_accepted(live, r):
    event, body = event_bytes("invoice.paid")
    conn = connection(live)
    try:
        conn.request("POST", WEBHOOK, body=iter([body[:100], body[100:]]), headers=sign(body), encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "queued"
    finally:
        conn.close()
    assert [e["payload"] for e in entries(r)] == [body]


def test_send_command_delivers_every_type_in_both_api_shapes(live, redis_url, r, tmp_path):
    env = service_env(redis_url, f"sqlite:///{tmp_path}/x.db")
    cases = [(t, v) for t in EVENT_TYPES for v in API_VERSIONS]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver",
                "send",
                t,
                "--community",
                "42",
                "--api-version",
                v,
                "--url",
                live + WEBHOOK,
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for t, v in cases
    ]
    sent = {}
    for (event_type, version), proc in zip(cases, procs):
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (event_type, version, out, err)
        assert "200" in out and "queued" in out, out
        first = out.splitlines()[0].split()  # sent TYPE ID (api_version V) to URL
        assert first[:2] == ["sent", event_type]
        sent[first[2]] = (event_type, version)

    stream = {e["event_id"].decode(): e for e in entries(r)}
    assert set(stream) == set(sent)
    for event_id, (event_type, version) in sent.items():
        event = json.loads(stream[event_id]["payload"])
        assert event["type"] == stream[event_id]["event_type"].decode() == event_type
        assert event["api_version"] == (CURRENT_API_VERSION if version == "current" else version)
        # Where each shape keeps it: the consumer's own reader finds the community.
        assert read_facts(event).community_id == "42", (event_type, version)


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/webhooks/stripe", "not-a-url"])
def test_send_to_nowhere_fails_in_one_line(redis_url, tmp_path, url):
    result = run_module(
        "receiver",
        "send",
        "invoice.paid",
        "--community",
        "42",
        "--url",
        url.format(port=free_port()),
        env=service_env(redis_url, f"sqlite:///{tmp_path}/x.db"),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not reach" in lines[0], result.stderr


def test_serve_without_a_secret_exits_with_a_clear_message(redis_url, tmp_path):
    env = service_env(redis_url, f"sqlite:///{tmp_path}/x.db")
    del env["STRIPE_WEBHOOK_SECRET"]
    result = run_module("receiver", "serve", "--bind", f"127.0.0.1:{free_port()}", env=env, timeout=20)
    assert result.returncode != 0
    assert "STRIPE_WEBHOOK_SECRET" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_a_bad_setting_names_it(redis_url, tmp_path):
    env = service_env(redis_url, f"sqlite:///{tmp_path}/x.db", REDIS_URL="http://x")
    result = run_module("receiver", "serve", "--bind", f"127.0.0.1:{free_port()}", env=env, timeout=20)
    assert result.returncode != 0
    assert "REDIS_URL" in result.stderr and "Traceback" not in result.stderr


def test_two_receivers_run_side_by_side(redis_url, r, tmp_path):
    # Where gunicorn would put its machine-wide control socket, made private to this test.
    runtime, home = tmp_path / "run", tmp_path / "home"
    runtime.mkdir()
    home.mkdir()
    env = service_env(redis_url, f"sqlite:///{tmp_path}/x.db", XDG_RUNTIME_DIR=str(runtime), HOME=str(home))
    first, first_url = start_receiver(env, str(tmp_path), workers=1)
    try:
        second, second_url = start_receiver(env, str(tmp_path), workers=1)
        try:
            queued = []
            for base in (first_url, second_url):
                event, body = event_bytes("invoice.paid")
                status, answer = post(base, body, sign(body))
                assert (status, answer["status"]) == (200, "queued"), base
                queued.append(event["id"])
            assert [e["event_id"].decode() for e in entries(r)] == queued
            assert list(runtime.iterdir()) == [] and list(home.iterdir()) == []
            assert "Control socket" not in first.output() + second.output()
            first.stop()
            assert urllib.request.urlopen(f"{second_url}/healthz", timeout=5).status == 200
        finally:
            second.stop()
    finally:
        first.stop()
