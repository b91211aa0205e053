"""Hypothesis strategies shared by the fuzzers: JSON values of every shape (and the odd values Stripe never
sends but a sender could), realistic Stripe events in both API shapes, and mutations of those events at
arbitrary paths."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from receiver.sample_events import API_VERSIONS, EVENT_TYPES, build_event
from tests.stripe_helpers import load_peer_events

# Examples per fuzz test. CI keeps the defaults; FUZZ_EXAMPLES=5000 (say, with --timeout 0) fuzzes deeper.
_EXAMPLES = os.environ.get("FUZZ_EXAMPLES")


def fuzz_settings(max_examples: int) -> settings:
    """The fuzzers' settings: a bounded number of examples; no deadline (a loaded CI machine and PostgreSQL
    make single examples slow); function-scoped fixtures allowed (one Redis, one database per test, not per
    example: each example resets what it uses); and a failure prints the @reproduce_failure blob that
    replays it, besides Hypothesis' own example database (.hypothesis/)."""
    return settings(
        max_examples=int(_EXAMPLES) if _EXAMPLES else max_examples,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- JSON values ------------------------------------------------------------------------------------------

# Text that survives a JSON round trip and a UTF-8 encoding: no lone surrogates (the receiver refuses those
# in ids and types; elsewhere json.dumps escapes them, and the fuzzers put them in on purpose below).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
BIG_INTS = st.sampled_from(
    [2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**20, 10**300, -(10**300), 10**4000]
)
ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "evt_\x00",
        "\ud800",
        "a\udfffb",
        "x" * 300,
        "y" * 70_000,
        "é" * 200,
        "\u202e",
        "💳",
        "NaN",
        "null",
        "1e400",
        "9" * 30,
        "::",
        "/",
        "../..",
        "c1\n",
        "\t",
    ]
)
STATUS_WORDS = st.sampled_from(
    [
        "active",
        "past_due",
        "canceled",
        "trialing",
        "unpaid",
        "incomplete",
        "incomplete_expired",
        "paused",
        "ended",
        "ACTIVE",
        "deleted",
        "paid",
        "no_payment_required",
        "open",
        "void",
        "subscription",
        "payment",
        "setup",
        "subscription_create",
        "subscription_cycle",
        "manual",
    ]
)
TIER_WORDS = st.sampled_from(
    ["starter", "basic", "premium", "exclusive", "elite", "enterprise", "pro", "Premium", " premium ", "free", "gold"]
)
COMMUNITY_IDS = st.one_of(
    st.sampled_from(
        ["c1", "c2", "42", "a" * 128, "a" * 129, "c:1", "c/1", "c 1", "é", "c1\n", ".", "..", "-", "_", "A.b-c_9"]
    ),
    st.from_regex(r"[A-Za-z0-9_.-]{1,128}", fullmatch=True),
)

# Ids and times that mean something to the history the handler fuzzer sets up (tests/handler_helpers' POLICY
# maps price_elite and price_basic): a fuzzed event is then sometimes about the same subscription, or older.
STRIPE_IDS = st.sampled_from(
    ["sub_1", "sub_0", "sub_2", "cus_1", "cus_2", "in_1", "in_0", "price_1", "price_elite", "price_basic"]
)
T0 = 1_760_000_000
TIMES = st.integers(T0 - 1_000, T0 + 1_000)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    BIG_INTS,
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    ODD_STRINGS,
    STATUS_WORDS,
    TIER_WORDS,
    COMMUNITY_IDS,
    STRIPE_IDS,
    TIMES,
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value (finite numbers only: JSON has no others, and the receiver refuses them)."""
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(TEXT, st.sampled_from(KEYS)), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# Keys our reader looks for, so that inserted objects are sometimes read, not only carried along.
KEYS = [
    "id",
    "object",
    "metadata",
    "community_id",
    "tier",
    "status",
    "customer",
    "subscription",
    "invoice",
    "mode",
    "payment_status",
    "price",
    "plan",
    "pricing",
    "price_details",
    "data",
    "lines",
    "items",
    "period",
    "start",
    "end",
    "current_period_start",
    "current_period_end",
    "parent",
    "subscription_details",
    "subscription_item_details",
    "proration",
    "type",
    "amount_paid",
    "amount_due",
    "amount_total",
    "currency",
    "attempt_count",
    "billing_reason",
    "created",
]


def dumps(value: Any) -> bytes:
    """JSON bytes as a sender would write them (lone surrogates escaped, every int in full)."""
    return json.dumps(value).encode()


# --- realistic events ---------------------------------------------------------------------------------------

DAY = 86_400


def _base_events() -> list[dict]:
    """Every handled type in both API shapes, for one community's one subscription (ids fixed, so that
    examples replay), plus the peer projects' events of the handled types."""
    events = []
    for api in API_VERSIONS:
        ids = dict(api_version=api, created=T0, event_id="evt_base", customer_id="cus_1", subscription_id="sub_1")
        billed = dict(ids, price_id="price_1", invoice_id="in_1")
        for event_type in EVENT_TYPES:
            events.append(build_event(event_type, "c1", period_start=T0 + DAY, period_end=T0 + 31 * DAY, **billed))
        events.append(build_event("checkout.session.completed", "c1", payment_status="unpaid", **billed))
        events.append(build_event("customer.subscription.updated", None, status="past_due", **ids))
        events.append(build_event("invoice.payment_failed", None, billing_reason="subscription_create", **ids))
    return events


BASE_EVENTS = _base_events()
PEER_EVENTS = [(name, json.loads(body)) for name, body in load_peer_events()]
PEER_HANDLED = [
    event
    for _name, event in PEER_EVENTS
    if isinstance(event, dict) and event.get("type") in {e["type"] for e in BASE_EVENTS}
]


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into `value` (keys and list indices), the root excluded."""
    found = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return found
    for key, child in items:
        found.append(prefix + (key,))
        found.extend(paths(child, prefix + (key,)))
    return found


# Paths the reader cares about most: drawn often, whether or not the base event has them.
HOT_PATHS = [
    ("created",),
    ("data",),
    ("data", "object"),
    ("type",),
    ("data", "object", "metadata"),
    ("data", "object", "metadata", "community_id"),
    ("data", "object", "metadata", "tier"),
    ("data", "object", "status"),
    ("data", "object", "mode"),
    ("data", "object", "payment_status"),
    ("data", "object", "customer"),
    ("data", "object", "subscription"),
    ("data", "object", "invoice"),
    ("data", "object", "id"),
    ("data", "object", "billing_reason"),
    ("data", "object", "amount_paid"),
    ("data", "object", "amount_due"),
    ("data", "object", "amount_total"),
    ("data", "object", "current_period_start"),
    ("data", "object", "current_period_end"),
    ("data", "object", "items"),
    ("data", "object", "items", "data"),
    ("data", "object", "items", "data", 0, "current_period_end"),
    ("data", "object", "items", "data", 0, "price"),
    ("data", "object", "lines"),
    ("data", "object", "lines", "data"),
    ("data", "object", "lines", "data", 0),
    ("data", "object", "lines", "data", 0, "period"),
    ("data", "object", "lines", "data", 0, "period", "end"),
    ("data", "object", "lines", "data", 0, "period", "start"),
    ("data", "object", "lines", "data", 0, "price"),
    ("data", "object", "lines", "data", 0, "type"),
    ("data", "object", "lines", "data", 0, "proration"),
    ("data", "object", "lines", "data", 0, "parent"),
    ("data", "object", "parent"),
    ("data", "object", "parent", "subscription_details"),
    ("data", "object", "parent", "subscription_details", "subscription"),
    ("data", "object", "parent", "subscription_details", "metadata"),
    ("data", "object", "parent", "subscription_details", "metadata", "community_id"),
    ("data", "object", "subscription_details", "metadata"),
    ("data", "object", "subscription_details", "metadata", "community_id"),
    ("data", "object", "line_items"),
    ("data", "object", "currency"),
    ("data", "object", "attempt_count"),
]

# What to put at a path: anything, or the values that matter to a field of that kind.
REPLACEMENTS = st.one_of(
    json_values(),
    SCALARS,
    STATUS_WORDS,
    TIER_WORDS,
    COMMUNITY_IDS,
    BIG_INTS,
    ODD_STRINGS,
    STRIPE_IDS,
    TIMES,
    st.dictionaries(TEXT, SCALARS, max_size=3),
    st.lists(SCALARS, max_size=3),
)

_DELETE, _NULL, _REPLACE = "delete", "null", "replace"


def mutate(event: Any, path: tuple, action: str, value: Any = None) -> None:
    """Delete, null out or replace what is at `path` in place; create the parents when a path is missing
    (replace only), replacing any non-container on the way."""
    parent = event
    for step in path[:-1]:
        child = _get(parent, step)
        if not isinstance(child, (dict, list)):
            if action != _REPLACE:
                return
            child = {}
            if not _set(parent, step, child):
                return
        parent = child
    last = path[-1]
    if action == _DELETE:
        if isinstance(parent, dict):
            parent.pop(last, None)
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            del parent[last]
    else:
        _set(parent, last, None if action == _NULL else value)


def _get(container: Any, step: Any) -> Any:
    if isinstance(container, dict):
        return container.get(step)
    if isinstance(container, list) and isinstance(step, int) and step < len(container):
        return container[step]
    return None


def _set(container: Any, step: Any, value: Any) -> bool:
    if isinstance(container, dict):
        container[step] = value
        return True
    if isinstance(container, list) and isinstance(step, int):
        if step < len(container):
            container[step] = value
        else:
            container.append(value)
        return True
    return False


@st.composite
def mutated_events(draw, bases: list[dict] | None = None, max_mutations: int = 4, keep_envelope: bool = True):
    """A realistic event with 0 to `max_mutations` fields deleted, nulled or replaced by arbitrary JSON at
    arbitrary paths. With keep_envelope, `id` and `type` stay (the receiver refuses an event without them,
    so a consumer never sees one)."""
    event = copy.deepcopy(draw(st.sampled_from(bases or BASE_EVENTS + PEER_HANDLED)))
    for _ in range(draw(st.integers(0, max_mutations))):
        path = draw(st.one_of(st.sampled_from(HOT_PATHS), st.sampled_from(paths(event) or [("data",)])))
        if keep_envelope and path[0] in ("id", "type"):
            continue
        action = draw(st.sampled_from([_DELETE, _NULL, _REPLACE, _REPLACE, _REPLACE]))
        mutate(event, path, action, draw(REPLACEMENTS) if action == _REPLACE else None)
    return event
