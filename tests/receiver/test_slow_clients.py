"""Slow or stalled clients cannot starve intake: connections that send a few bytes and stall, or trickle a body,
must not keep a signed webhook from its 200. Real sockets against a real receiver (gunicorn as `serve` runs it)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.parse

import pytest

from harness import SECRET, service_env, start_receiver
from receiver.sample_events import build_event
from receiver.signing import signature_header

STALLED = 8


@pytest.fixture
def receiver_url(redis_url, sqlite_url, tmp_path):
    """A live receiver (`serve`, gunicorn's worker count left to its defaults): its URL, split."""
    proc, base = start_receiver(service_env(redis_url, sqlite_url), str(tmp_path), workers=None)
    yield urllib.parse.urlsplit(base)
    proc.stop()


def stall(address, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(first_bytes)
    return sock


def signed_post(address, timeout: float) -> tuple[int, float]:
    body = json.dumps(build_event("invoice.paid", "slow-1")).encode()
    head = (
        f"POST /webhooks/stripe HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {signature_header(body, SECRET)}\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(head + body)
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1]), time.monotonic() - started


@pytest.mark.parametrize("kind", ["partial headers", "trickled body", "both"])
def test_a_webhook_gets_its_200_while_connections_stall(receiver_url, kind):
    address = (receiver_url.hostname, receiver_url.port)
    partial = b"POST /webhooks/stripe HTTP/1.1\r\nHost: receiver\r\n"
    trickle = b'POST /webhooks/stripe HTTP/1.1\r\nHost: receiver\r\nContent-Length: 100000\r\n\r\n{"id"'
    firsts = {
        "partial headers": [partial] * STALLED,
        "trickled body": [trickle] * STALLED,
        "both": [partial, trickle] * (STALLED // 2),
    }[kind]
    with contextlib.ExitStack() as stack:
        for first in firsts:
            stack.enter_context(stall(address, first))
        for _ in range(3):  # and again: the stalled ones still hold their connections
            status, _seconds = signed_post(address, timeout=3)
            assert status == 200


def test_a_stalled_connection_is_closed_after_the_read_timeout(receiver_url):
    """Bounded reads: a client that stops mid-request loses its connection (and its thread) instead of keeping it."""
    from receiver.worker import READ_TIMEOUT_SECONDS

    sock = stall((receiver_url.hostname, receiver_url.port), b"POST /webhooks/stripe HTTP/1.1\r\nHost: receiver\r\n")
    sock.settimeout(READ_TIMEOUT_SECONDS * 3)
    started = time.monotonic()
    with sock:
        try:
            reply = sock.recv(4096)  # the server's close (b""), or an error answer before it
        except ConnectionResetError:
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
    assert time.monotonic() - started < READ_TIMEOUT_SECONDS * 3
