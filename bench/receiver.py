"""The receiver's latency from a client, on demand: `.venv/bin/python bench/receiver.py [--requests N]`.

Starts its own redis-server (append-only, fsync always, as `bin/run` does) and a receiver (gunicorn,
2 workers) on SQLite seeded with subscriptions, then times, over one keep-alive connection:
GET /healthz (the baseline: the same HTTP stack with no Redis or database work); POST /webhooks/stripe
with a new signed event each time (verify, dedupe and XADD: the answer Stripe waits for) and with one
already queued (duplicate); GET /v1/.../entitlements answered from the cache (one community, warm) and
from the database (a different community each time, so every read misses). Prints p50/p90/p99 and
each figure's ratio to the baseline measured in the same run."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from billing.clock import utcnow  # noqa: E402
from harness import SECRET, RedisServer, service_env, start_receiver  # noqa: E402
from models.db import open_database  # noqa: E402
from models.migrations import migrate  # noqa: E402
from models.tables import Subscription  # noqa: E402
from receiver.sample_events import build_event  # noqa: E402
from receiver.signing import signature_header  # noqa: E402


def sign(body: bytes) -> dict[str, str]:
    return {"Stripe-Signature": signature_header(body, SECRET), "Content-Type": "application/json"}


def timed_gets(conn: http.client.HTTPConnection, paths: list[str]) -> list[float]:
    return timed(conn, [("GET", path, None, {}) for path in paths])


def timed_posts(conn: http.client.HTTPConnection, bodies: list[bytes]) -> list[float]:
    return timed(conn, [("POST", "/webhooks/stripe", body, sign(body)) for body in bodies])


def timed(conn: http.client.HTTPConnection, requests: list[tuple]) -> list[float]:
    latencies = []
    for method, path, body, headers in requests:
        start = time.perf_counter()
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        latencies.append(time.perf_counter() - start)
        assert response.status == 200, (path, response.status, answer[:200])
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50": statistics.median(ordered) * 1000, "p90": pick(0.90), "p99": pick(0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-entitlements-")
    redis = RedisServer(appendonly=True).start()
    database_url = f"sqlite:///{tmp}/billing.db"
    db = open_database(database_url)
    migrate(db)
    with db.atomic():
        for n in range(args.requests + 1):
            Subscription.create(community_id=f"c{n}", tier="premium", status="active", updated_at=utcnow())
    db.close()
    receiver, base = start_receiver(service_env(redis.url, database_url), tmp, workers=2)
    try:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
        timed_gets(conn, ["/healthz", "/v1/communities/c0/entitlements"] * 50)  # warm up both paths
        new_events = [json.dumps(build_event("invoice.paid", f"c{n}")).encode() for n in range(args.requests)]
        figures = {
            "baseline GET /healthz": summary(timed_gets(conn, ["/healthz"] * args.requests)),
            "webhook, queued": summary(timed_posts(conn, new_events)),
            "webhook, duplicate": summary(timed_posts(conn, new_events[:1] * args.requests)),
            "entitlements, cache hit": summary(timed_gets(conn, ["/v1/communities/c0/entitlements"] * args.requests)),
            "entitlements, cache miss": summary(
                timed_gets(conn, [f"/v1/communities/c{n}/entitlements" for n in range(1, args.requests + 1)])
            ),
        }
        conn.request("GET", "/v1/communities/c0/entitlements")
        assert json.loads(conn.getresponse().read())["source"] == "cache"
    finally:
        receiver.stop()
        redis.close()
    base_p50 = figures["baseline GET /healthz"]["p50"]
    print(
        f"{args.requests} sequential requests each, one keep-alive connection, gunicorn 2 workers, SQLite, "
        "Redis with appendfsync always"
    )
    print(f"{'':28} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 / baseline':>15}")
    for name, f in figures.items():
        print(f"{name:28} {f['p50']:8.3f} {f['p90']:8.3f} {f['p99']:8.3f} {f['p50'] / base_p50:15.2f}")


if __name__ == "__main__":
    main()
