"""The Celery baseline of bench/consumer.py: the webhook job as most Flask apps would queue it, one task per
event (the body as the task's argument), a Redis broker, acks_late, results ignored; the task does the raw
loop's three writes (bench/consumer_baselines.write) for its one event, in its own transaction.

The worker: `python -m celery -A bench.consumer_celery worker -c 2 ...` with BENCH_CELERY_BROKER (a Redis
URL) and BENCH_CELERY_DB (an SQLite path) in its environment."""

from __future__ import annotations

import json
import os
import sqlite3

from celery import Celery

from bench.consumer_baselines import open_sqlite, write

QUEUE = "bench-webhooks"

app = Celery("bench_consumer", broker=os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_conn: sqlite3.Connection | None = None


@app.task(name="bench.apply_event")
def apply_event(payload: str) -> None:
    global _conn
    if _conn is None:  # one connection per pool process, opened on its first task
        _conn = open_sqlite(os.environ["BENCH_CELERY_DB"])
    write(_conn, [json.loads(payload)])


def send_all(broker_url: str, payloads: list[bytes]) -> None:
    """Queue one task per payload (as a webhook view calling `apply_event.delay(body)` would)."""
    app.conf.broker_url = broker_url
    with app.producer_or_acquire() as producer:
        for payload in payloads:
            apply_event.apply_async((payload.decode(),), producer=producer)
