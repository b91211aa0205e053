"""bench/consumer.py's workload and measuring tools: realistic Stripe events, queued as the receiver queues
them, and what /proc and Redis tell about a process draining them."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import orjson
import redis

from billing.config import Settings
from billing.event_queue import EventQueue
from harness import RedisServer
from models.db import open_database
from models.migrations import migrate
from receiver.sample_events import DAY, build_event

KEYS = Settings().keys  # the consumer's defaults: it reads what the receiver queues there
STREAM_KEY = KEYS.stream
GROUP = Settings().consumer_group
DEDUPE_TTL = Settings().dedupe_ttl_seconds
TICKS = os.sysconf("SC_CLK_TCK")

# One community's life, in the current API shape: (day offset, seconds after it, event type, extra arguments).
# Checkout and its first invoice; two renewals; a failed payment, past_due, recovered; then cancelled.
STORY: tuple[tuple[int, int, str, dict], ...] = (
    (0, 0, "checkout.session.completed", {}),
    (0, 1, "invoice.paid", {"billing_reason": "subscription_create", "first_invoice": True}),
    (30, 0, "customer.subscription.updated", {"period": 1}),
    (30, 1, "invoice.paid", {"period": 1}),
    (60, 0, "customer.subscription.updated", {"period": 2}),
    (60, 1, "invoice.payment_failed", {"period": 2}),
    (60, 2, "customer.subscription.updated", {"period": 2, "status": "past_due"}),
    (63, 0, "invoice.paid", {"period": 2, "attempt_count": 2}),
    (63, 1, "customer.subscription.updated", {"period": 2}),
    (75, 0, "customer.subscription.deleted", {"period": 2}),
)
STORY_DAYS = 90
TIERS = ("basic", "premium", "elite")

Queued = tuple[str, str, int, bytes]  # event id, type, created, body: what EventQueue.enqueue takes


def events(n: int, prefix: str = "bench") -> list[Queued]:
    """`n` events over ceil(n/10) communities, each living STORY, their starts spread over STORY_DAYS so that
    every stage of the story is interleaved with every other in the stream; in `created` order."""
    communities = max(1, -(-n // len(STORY)))
    spacing = STORY_DAYS * DAY / communities
    origin = int(time.time()) - 2 * STORY_DAYS * DAY
    out = []
    for c in range(communities):
        start = origin + int(c * spacing)
        out.extend(_story(f"{prefix}-{c}", c, start))
    out.sort(key=lambda queued: queued[2])
    return out[:n]


def _story(community: str, c: int, start: int) -> list[Queued]:
    ids = dict(
        customer_id=f"cus_{community}",
        subscription_id=f"sub_{community}",
        price_id=f"price_{c % 3}",
        tier=TIERS[c % len(TIERS)],
        amount=(900, 2900, 9900)[c % 3],
    )
    first_invoice = f"in_{community}_0"
    out = []
    for days, seconds, event_type, extra in STORY:
        extra = dict(extra)
        period = extra.pop("period", 0)
        kwargs = {
            **ids,
            "created": start + days * DAY + seconds,
            "period_start": start + period * 30 * DAY,
            "period_end": start + (period + 1) * 30 * DAY,
            **extra,
        }
        if kwargs.pop("first_invoice", False) or event_type.startswith("checkout."):
            kwargs["invoice_id"] = first_invoice
        event = build_event(event_type, community, **kwargs)
        # pretty-printed with 2 spaces, as Stripe sends them and so as the receiver queues them
        out.append((event["id"], event_type, event["created"], orjson.dumps(event, option=orjson.OPT_INDENT_2)))
    return out


def enqueue(client: redis.Redis, queued: list[Queued], chunk: int = 500) -> None:
    """Onto the consumer's stream, as the receiver does (dedupe and XADD in one script), `chunk` per round trip."""
    queue = EventQueue(client, KEYS, DEDUPE_TTL)
    for n in range(0, len(queued), chunk):
        replies = queue.enqueue_many(queued[n : n + chunk])
        bad = [reply for reply in replies if not isinstance(reply, str)]
        if bad:
            raise RuntimeError(f"enqueue answered {bad[:3]}")


@contextlib.contextmanager
def fresh_redis(appendonly: bool = False) -> Iterator[RedisServer]:
    """A redis-server of its own; with `appendonly`, fsync before answering each write (bin/run's)."""
    server = RedisServer(appendonly=appendonly).start()
    try:
        yield server
    finally:
        server.close()


def prepare_database(database_url: str) -> None:
    """Our tables, as `python -m models migrate` makes them."""
    db = open_database(database_url)
    migrate(db)
    db.close()


def group_info(client: redis.Redis, group: str = GROUP) -> dict:
    for info in client.xinfo_groups(STREAM_KEY):
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return info
    raise LookupError(group)


def drained(client: redis.Redis, total: int, group: str = GROUP) -> bool:
    """Every one of `total` entries delivered and acknowledged (so committed: the consumer acks after its
    commit)."""
    info = group_info(client, group)
    return (info.get("entries-read") or 0) >= total and info["lag"] == 0 and info["pending"] == 0


def poll(condition: Callable[[], bool], timeout: float, interval: float, what: str) -> float:
    """Wait for `condition`; time.perf_counter() when it first held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()


# --- /proc ----------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                parents[int(entry)] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found.extend(frontier)
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid`'s process tree (live processes), in seconds."""
    total = 0.0
    for member in tree(pid):
        fields = _stat(member)
        if fields:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores (/proc/stat)."""
    with open("/proc/stat") as handle:
        ticks = [int(field) for field in handle.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def busy_since(before: tuple[int, int]) -> float:
    """The machine's busy share (0..1 over all cores) since `before` = machine_jiffies()."""
    busy, total = machine_jiffies()
    return (busy - before[0]) / max(1, total - before[1])


def rss_mb(pid: int) -> float:
    """Resident set of one process, in MB (VmRSS)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
