"""Reading Stripe events, in every API shape, into one small value our handlers use.

Stripe moved fields in API version 2025-03-31.basil:
- an invoice's subscription and its metadata: `invoice.subscription` and
  `invoice.subscription_details.metadata` became `invoice.parent.subscription_details.{subscription,metadata}`;
- an invoice line's subscription: `line.type == "subscription"` / `line.subscription` became
  `line.parent.subscription_item_details.subscription`;
- a subscription's period: `subscription.current_period_*` moved onto each `items.data[]` item.
This module is the one place that knows both; nothing else digs through the nested dicts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import orjson

from billing.vocabulary import EventType

JsonObject = dict[str, Any]  # a JSON object as orjson reads it


class UnreadableEvent(ValueError):
    """The event claims a type we handle but its payload is not that type's object."""


@dataclasses.dataclass(frozen=True)
class BillingFacts:
    event_id: str
    event_type: str
    created: int
    object_id: str | None = None
    community_id: str | None = None
    tier: str | None = None  # as written in metadata: may be anything, validated by the handler
    customer_id: str | None = None
    subscription_id: str | None = None
    status: str | None = None  # a subscription's Stripe status
    period_start: int | None = None
    period_end: int | None = None
    price_ids: tuple[str, ...] = ()
    amount: int | None = None
    currency: str | None = None
    attempt_count: int | None = None
    mode: str | None = None  # a checkout session's: only `subscription` sessions are ours
    payment_status: str | None = None  # a checkout session's: paid, unpaid, no_payment_required
    invoice_id: str | None = None  # a checkout session's first invoice
    billing_reason: str | None = None  # an invoice's: subscription_create for a subscription's first


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    """Python's json reads NaN, Infinity and -Infinity, which JSON has not and Stripe never sends."""
    raise _NotFinite(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: too big for a float, read as infinity
        raise _NotFinite(f"{text[:40]} is not a finite number")
    return value


def parse_envelope(body: bytes | str) -> dict[str, Any]:
    """Parse a webhook body; raise ValueError unless it is a JSON object with string `id` and `type`.
    A number JSON has not (NaN, Infinity) or no float can hold (1e400) makes the body malformed: every
    number in an event is then finite.

    orjson reads a body several times faster than json and refuses all of that itself; a body it refuses is
    read again by json, for the exact reason (and the rare body json takes and orjson does not: a lone
    surrogate in a string)."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        event = _parse_strictly(body)
    return _envelope(event)


def _parse_strictly(body: bytes | str) -> Any:
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    except RecursionError:  # nested deeper than the parser's recursion limit
        raise ValueError("body is not JSON: nested too deeply") from None
    except _NotFinite as exc:
        raise ValueError(f"body holds a number Stripe never sends: {exc}") from None
    except ValueError as exc:  # an integer of more than sys.get_int_max_str_digits() digits
        raise ValueError(f"body holds a number Stripe never sends: {str(exc)[:80]}") from None


def _envelope(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise ValueError("body is not a JSON object")
    for field in ("id", "type"):
        value = event.get(field)
        if not isinstance(value, str) or not value:
            raise ValueError(f"event has no {field!r}")
        try:
            value.encode("utf-8")  # a lone surrogate ("\\ud800") is no text Redis or a log can take
        except UnicodeEncodeError:
            raise ValueError(f"event {field!r} is not valid Unicode text") from None
    return event


_EPOCH_LIMIT = 2**63  # a BIGINT; Stripe's `created` is epoch seconds, far below


def event_created(event: dict[str, Any]) -> int:
    """The event's `created` as whole epoch seconds; 0 when it is not a number or not one a BIGINT column
    holds. Never raises, whatever JSON value (NaN and infinities included) it finds."""
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        return 0
    if not -_EPOCH_LIMIT < created < _EPOCH_LIMIT:  # False for NaN too
        return 0
    return int(created)


def read_facts(event: dict[str, Any]) -> BillingFacts:
    """The facts of an event of a handled EventType. Raises UnreadableEvent if data.object is not an object."""
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise UnreadableEvent(f"{event.get('type')}: data.object is not an object")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise UnreadableEvent(f"{event.get('type')}: created is not a finite number: {str(created)[:40]!r}")
    base = dict(event_id=event["id"], event_type=event["type"], created=int(created), object_id=_str(obj.get("id")))
    kind = event["type"].split(".")[0]
    if kind == "checkout":
        return _checkout_session(obj, base)
    if kind == "invoice":
        return _invoice(obj, base)
    return _subscription(obj, base)


def _checkout_session(session: JsonObject, base: JsonObject) -> BillingFacts:
    metadata = _dict(session.get("metadata"))
    line_items = _dict(session.get("line_items")).get("data")  # present only when expanded
    return BillingFacts(
        **base,
        community_id=_str(metadata.get("community_id")),
        tier=_str(metadata.get("tier")),
        customer_id=_id(session.get("customer")),
        subscription_id=_id(session.get("subscription")),
        # Expanded, the subscription says whether it is trialing; a webhook's session rarely carries it.
        status=_str(_dict(session.get("subscription")).get("status")),
        price_ids=_price_ids(line_items),
        mode=_str(session.get("mode")) or "subscription",  # sessions from before `mode` existed were all ours
        payment_status=_str(session.get("payment_status")),
        invoice_id=_id(session.get("invoice")),
        amount=_int(session.get("amount_total")),
        currency=_str(session.get("currency")),
    )


def _invoice(invoice: JsonObject, base: JsonObject) -> BillingFacts:
    details = _dict(_dict(invoice.get("parent")).get("subscription_details"))  # 2025-03-31 and later
    legacy_details = _dict(invoice.get("subscription_details"))  # before
    subscription_id = _id(details.get("subscription")) or _id(invoice.get("subscription"))
    metadata = {
        **_dict(invoice.get("metadata")),
        **_dict(legacy_details.get("metadata")),
        **_dict(details.get("metadata")),
    }
    lines = _list(_dict(invoice.get("lines")).get("data"))
    sub_lines = _subscription_lines(lines, subscription_id)
    # Several lines (several items): they share the period; prefer the one ending last.
    line = max(sub_lines, key=lambda line: _int(_dict(line.get("period")).get("end")) or 0, default=None)
    period = _dict(line.get("period")) if line else {}
    paid = base["event_type"] == EventType.INVOICE_PAID
    return BillingFacts(
        **base,
        community_id=_str(metadata.get("community_id")),
        tier=_str(metadata.get("tier")),
        customer_id=_id(invoice.get("customer")),
        subscription_id=subscription_id,
        period_start=_int(period.get("start")),
        period_end=_int(period.get("end")),
        price_ids=_price_ids(sub_lines or lines),  # a proration's (old) price must not decide the tier
        amount=_int(invoice.get("amount_paid" if paid else "amount_due")),
        currency=_str(invoice.get("currency")),
        attempt_count=_int(invoice.get("attempt_count")),
        billing_reason=_str(invoice.get("billing_reason")),
    )


def _subscription_lines(lines: list[Any], subscription_id: str | None) -> list[JsonObject]:
    """The invoice lines that bill the subscription (not prorations or one-off items)."""
    candidates = []
    for line in lines:
        if not isinstance(line, dict) or line.get("proration") is True:
            continue
        item_details = _dict(_dict(line.get("parent")).get("subscription_item_details"))
        if item_details.get("proration") is True:
            continue
        line_sub = _id(item_details.get("subscription")) or _id(line.get("subscription"))
        if line.get("type") == "subscription" or item_details or (line_sub and line_sub == subscription_id):
            candidates.append(line)
    return candidates


def _subscription(subscription: JsonObject, base: JsonObject) -> BillingFacts:
    metadata = _dict(subscription.get("metadata"))
    items = _list(_dict(subscription.get("items")).get("data"))
    start = _int(subscription.get("current_period_start"))  # before 2025-03-31
    end = _int(subscription.get("current_period_end"))
    if start is None or end is None:  # 2025-03-31 and later: on the items
        starts = [_int(item.get("current_period_start")) for item in items if isinstance(item, dict)]
        ends = [_int(item.get("current_period_end")) for item in items if isinstance(item, dict)]
        start = min((s for s in starts if s is not None), default=None)
        end = max((e for e in ends if e is not None), default=None)
    return BillingFacts(
        **base,
        community_id=_str(metadata.get("community_id")),
        tier=_str(metadata.get("tier")),
        customer_id=_id(subscription.get("customer")),
        subscription_id=_str(subscription.get("id")),
        status=_str(subscription.get("status")),
        period_start=start,
        period_end=end,
        price_ids=_price_ids(items),
    )


def _price_ids(items: Any) -> tuple[str, ...]:
    """Price ids of subscription items or invoice lines, in any shape (`price`, `plan`, `pricing`)."""
    found = []
    for item in _list(items):
        if not isinstance(item, dict):
            continue
        price = (
            _id(item.get("price"))
            or _id(_dict(_dict(item.get("pricing")).get("price_details")).get("price"))
            or _id(item.get("plan"))
        )
        if price and price not in found:
            found.append(price)
    return tuple(found)


def _dict(value: Any) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        text = str(value).strip()
        return text or None
    return None


def _id(value: Any) -> str | None:
    """An id that may be expanded into its object."""
    if isinstance(value, dict):
        return _str(value.get("id"))
    return _str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return int(value)
    return None
