"""Realistic Stripe webhook ``event`` payloads, as Stripe would POST them.

Used by ``python -m receiver send`` (a local ``stripe trigger``) and by tests.
Two API shapes are produced:

* legacy (``2024-06-20``): ``subscription.current_period_*``;
  ``invoice.subscription`` / ``invoice.subscription_details``; invoice lines
  carry ``type``, ``price`` and ``plan``.
* current (basil 2025-03-31 and later): billing periods live on each
  subscription item (``items.data[].current_period_*``); invoices point at
  their subscription through ``invoice.parent.subscription_details``; invoice
  lines carry ``parent.subscription_item_details`` and ``pricing``.

In both shapes an invoice's own ``period_start``/``period_end`` is the period
*before* the one being billed; the subscription line's ``period`` is the new one.
"""

from __future__ import annotations

import secrets
import string
import time
import uuid

from billing.vocabulary import HANDLED_TYPES, EventType

EVENT_TYPES: tuple[str, ...] = HANDLED_TYPES  # every type we handle, and only those
LEGACY_API_VERSION = "2024-06-20"
# Pinned by stripe-python 16.1.0 (stripe/_api_version.py, ``_ApiVersion.CURRENT``).
CURRENT_API_VERSION = "2026-10-28.endive"
API_VERSIONS = (LEGACY_API_VERSION, "current")

DAY = 86_400
_ALNUM = string.ascii_letters + string.digits


def _id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking object id, e.g. ``sub_1QxY...``."""
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def _metadata(community_id: str | None, tier: str | None) -> dict:
    md = {}
    if community_id is not None:
        md["community_id"] = community_id
    if tier is not None:
        md["tier"] = tier
    return md


def _list(data: list, url: str) -> dict:
    return {"object": "list", "data": data, "has_more": False, "total_count": len(data), "url": url}


class _Ctx:
    """Everything the object builders share for one event."""

    def __init__(
        self,
        *,
        legacy,
        community_id,
        tier,
        created,
        customer_id,
        subscription_id,
        price_id,
        status,
        period_start,
        period_end,
        amount,
        currency,
        attempt_count,
        payment_status,
        billing_reason,
        invoice_id,
        bank_debit,
    ):
        self.legacy = legacy
        self.community_id = community_id
        self.metadata = _metadata(community_id, tier)
        self.product_name = f"{tier.title()} membership" if tier else "Community membership"
        self.created = created
        self.customer = customer_id or _id("cus_", 14)
        self.subscription = subscription_id or _id("sub_")
        self.price = price_id or _id("price_")
        self.product = _id("prod_", 14)
        self.item = _id("si_", 14)
        self.invoice = invoice_id or _id("in_")
        self.payment_status = payment_status
        self.billing_reason = billing_reason
        # Only a bank debit (SEPA here) completes a checkout unpaid and settles it days later.
        self.bank_debit = bank_debit
        self.status = status
        self.period_start = period_start
        self.period_end = period_end
        self.prev_start = period_start - (period_end - period_start)
        self.amount = amount
        self.currency = currency
        self.attempt_count = attempt_count


# --- prices / plans ---------------------------------------------------------


def _price(c: _Ctx) -> dict:
    return {
        "id": c.price,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": c.created - 90 * DAY,
        "currency": c.currency,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": None,
        "product": c.product,
        "recurring": {
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": c.amount,
        "unit_amount_decimal": str(c.amount),
    }


def _plan(c: _Ctx) -> dict:
    return {
        "id": c.price,
        "object": "plan",
        "active": True,
        "amount": c.amount,
        "amount_decimal": str(c.amount),
        "billing_scheme": "per_unit",
        "created": c.created - 90 * DAY,
        "currency": c.currency,
        "interval": "month",
        "interval_count": 1,
        "livemode": False,
        "metadata": {},
        "nickname": None,
        "product": c.product,
        "usage_type": "licensed",
    }


# --- subscriptions ----------------------------------------------------------


def _subscription_item(c: _Ctx, start: int, end: int) -> dict:
    item = {
        "id": c.item,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": c.prev_start,
        "discounts": [],
        "metadata": {},
        "plan": _plan(c),
        "price": _price(c),
        "quantity": 1,
        "subscription": c.subscription,
        "tax_rates": [],
    }
    if not c.legacy:
        item.update(current_period_start=start, current_period_end=end)
    return item


def _subscription(c: _Ctx) -> dict:
    canceled = c.status == "canceled"
    sub = {
        "id": c.subscription,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": c.prev_start,
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": c.created if canceled else None,
        "cancellation_details": {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested" if canceled else None,
        },
        "collection_method": "charge_automatically",
        "created": c.prev_start,
        "currency": c.currency,
        "customer": c.customer,
        "days_until_due": None,
        "default_payment_method": _id("pm_"),
        "description": None,
        "discounts": [],
        "ended_at": c.created if canceled else None,
        "items": _list(
            [_subscription_item(c, c.period_start, c.period_end)],
            f"/v1/subscription_items?subscription={c.subscription}",
        ),
        "latest_invoice": c.invoice,
        "livemode": False,
        "metadata": dict(c.metadata),
        "schedule": None,
        "start_date": c.prev_start,
        "status": c.status,
        "trial_end": None,
        "trial_start": None,
    }
    if c.legacy:
        sub.update(
            current_period_start=c.period_start,
            current_period_end=c.period_end,
            discount=None,
            plan=_plan(c),
            quantity=1,
        )
    else:
        sub["billing_mode"] = {
            "type": "flexible",
            "flexible": {"proration_discounts": "included"},
            "updated_at": c.prev_start,
        }
    return sub


def _subscription_previous_attributes(c: _Ctx) -> dict:
    """What changed: a renewal (period rolled forward) for ``active``, else a status change."""
    if c.status != "active":
        return {"status": "active"}
    prev = {"latest_invoice": _id("in_")}
    if c.legacy:
        prev.update(current_period_start=c.prev_start, current_period_end=c.period_start)
    else:
        prev["items"] = {"data": [_subscription_item(c, c.prev_start, c.period_start)]}
    return prev


# --- invoices ---------------------------------------------------------------


def _invoice_line(c: _Ctx) -> dict:
    line = {
        "id": _id("il_"),
        "object": "line_item",
        "amount": c.amount,
        "currency": c.currency,
        "description": f"1 × {c.product_name} (at {c.amount / 100:.2f} {c.currency.upper()} / month)",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": c.invoice,
        "livemode": False,
        "metadata": dict(c.metadata),  # subscription lines mirror sub metadata
        "period": {"start": c.period_start, "end": c.period_end},
        "quantity": 1,
        "subscription": c.subscription,
    }
    if c.legacy:
        line.update(
            amount_excluding_tax=c.amount,
            plan=_plan(c),
            price=_price(c),
            proration=False,
            proration_details={"credited_items": None},
            subscription_item=c.item,
            tax_amounts=[],
            tax_rates=[],
            type="subscription",
            unit_amount_excluding_tax=str(c.amount),
        )
    else:
        line.update(
            parent={
                "type": "subscription_item_details",
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": None,
                    "proration": False,
                    "proration_details": {"credited_items": None},
                    "subscription": c.subscription,
                    "subscription_item": c.item,
                },
            },
            pretax_credit_amounts=[],
            pricing={
                "type": "price_details",
                "price_details": {"price": c.price, "product": c.product},
                "unit_amount_decimal": str(c.amount),
            },
            subtotal=c.amount,
            taxes=[],
        )
    return line


def _invoice(c: _Ctx, paid: bool) -> dict:
    inv = {
        "id": c.invoice,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Community Platform",
        "amount_due": c.amount,
        "amount_paid": c.amount if paid else 0,
        "amount_remaining": 0 if paid else c.amount,
        "attempt_count": c.attempt_count,
        "attempted": True,
        "auto_advance": not paid,
        "billing_reason": c.billing_reason,
        "collection_method": "charge_automatically",
        "created": c.created,
        "currency": c.currency,
        "customer": c.customer,
        "customer_email": "jenny.rosen@example.com",
        "customer_name": "Jenny Rosen",
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": c.created,
        "ending_balance": 0,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/acct_test/{c.invoice}",
        "invoice_pdf": f"https://pay.stripe.com/invoice/acct_test/{c.invoice}/pdf",
        "lines": _list([_invoice_line(c)], f"/v1/invoices/{c.invoice}/lines"),
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None if paid else c.created + 3 * DAY,
        "number": f"{secrets.token_hex(4).upper()}-{c.attempt_count:04d}",
        "period_start": c.prev_start,
        "period_end": c.period_start,
        "starting_balance": 0,
        "status": "paid" if paid else "open",
        "status_transitions": {
            "finalized_at": c.created,
            "marked_uncollectible_at": None,
            "paid_at": c.created if paid else None,
            "voided_at": None,
        },
        "subtotal": c.amount,
        "subtotal_excluding_tax": c.amount,
        "total": c.amount,
        "total_discount_amounts": [],
        "total_excluding_tax": c.amount,
        "webhooks_delivered_at": c.created,
    }
    if c.legacy:
        inv.update(
            charge=_id("ch_"),
            discount=None,
            paid=paid,
            paid_out_of_band=False,
            payment_intent=_id("pi_"),
            subscription=c.subscription,
            subscription_details={"metadata": dict(c.metadata)},
        )
    else:
        inv.update(
            amount_overpaid=0,
            parent={
                "type": "subscription_details",
                "quote_details": None,
                "subscription_details": {
                    "metadata": dict(c.metadata),
                    "subscription": c.subscription,
                    "subscription_proration_date": None,
                },
            },
            total_taxes=[],
        )
    return inv


# --- checkout ---------------------------------------------------------------


def _checkout_session(c: _Ctx) -> dict:
    return {
        "id": _id("cs_test_", 58),
        "object": "checkout.session",
        "allow_promotion_codes": None,
        "amount_subtotal": c.amount,
        "amount_total": c.amount,
        "automatic_tax": {"enabled": False, "liability": None, "status": None},
        "billing_address_collection": None,
        "cancel_url": "https://example.com/billing/cancel",
        "client_reference_id": c.community_id,
        "created": c.created - 120,
        "currency": c.currency,
        "customer": c.customer,
        "customer_creation": "always",
        "customer_details": {
            "address": {
                "city": None,
                "country": "US",
                "line1": None,
                "line2": None,
                "postal_code": "94107",
                "state": None,
            },
            "email": "jenny.rosen@example.com",
            "name": "Jenny Rosen",
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": [],
        },
        "customer_email": None,
        "expires_at": c.created - 120 + DAY,
        "invoice": c.invoice,
        "livemode": False,
        "locale": None,
        "metadata": dict(c.metadata),
        "mode": "subscription",
        "payment_intent": None,
        "payment_link": None,
        "payment_method_collection": "always",
        "payment_method_types": ["sepa_debit"] if c.bank_debit else ["card"],
        "payment_status": c.payment_status,
        "status": "complete",
        "submit_type": None,
        "subscription": c.subscription,
        "success_url": "https://example.com/billing/success?session_id={CHECKOUT_SESSION_ID}",
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": "hosted" if c.legacy else "hosted_page",  # renamed in 2026-03-25.dahlia
        "url": None,
    }


# --- public entry point -----------------------------------------------------


def build_event(
    event_type: str,
    community_id: str | None,
    *,
    tier: str | None = "premium",
    api_version: str = "current",
    created: int | None = None,
    event_id: str | None = None,
    customer_id: str | None = None,
    subscription_id: str | None = None,
    price_id: str | None = None,
    status: str | None = None,
    period_start: int | None = None,
    period_end: int | None = None,
    amount: int = 2900,
    currency: str = "usd",
    attempt_count: int = 1,
    payment_status: str | None = None,
    billing_reason: str = "subscription_cycle",
    invoice_id: str | None = None,
) -> dict:
    """Build one complete Stripe ``event`` dict (JSON-serialisable). A checkout session's
    ``payment_status`` is ``paid``, except ``unpaid`` for the async payment events' bank debit; ``trialing``
    as ``status`` gives a $0 trial invoice."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; expected one of: {', '.join(EVENT_TYPES)}")
    if api_version not in API_VERSIONS:
        raise ValueError(f"unknown api_version {api_version!r}; expected one of: {', '.join(API_VERSIONS)}")
    created = int(time.time()) if created is None else created
    period_start = created if period_start is None else period_start
    period_end = period_start + 30 * DAY if period_end is None else period_end
    if status is None:
        status = "canceled" if event_type == EventType.SUBSCRIPTION_DELETED else "active"
    if payment_status is None:
        payment_status = {EventType.CHECKOUT_ASYNC_PAYMENT_SUCCEEDED: "paid"}.get(
            event_type, "unpaid" if event_type.startswith("checkout.session.async") else "paid"
        )
    c = _Ctx(
        legacy=api_version == LEGACY_API_VERSION,
        community_id=community_id,
        tier=tier,
        created=created,
        customer_id=customer_id,
        subscription_id=subscription_id,
        price_id=price_id,
        status=status,
        period_start=period_start,
        period_end=period_end,
        amount=amount,
        currency=currency,
        attempt_count=attempt_count,
        payment_status=payment_status,
        billing_reason=billing_reason,
        invoice_id=invoice_id,
        bank_debit=event_type.startswith("checkout.session.async") or payment_status == "unpaid",
    )

    if event_type.startswith("checkout.session."):
        data = {"object": _checkout_session(c)}
    elif event_type.startswith("invoice."):
        data = {"object": _invoice(c, paid=event_type == EventType.INVOICE_PAID)}
    else:
        data = {"object": _subscription(c)}
        if event_type == EventType.SUBSCRIPTION_UPDATED:
            data["previous_attributes"] = _subscription_previous_attributes(c)

    return {
        "id": event_id or _id("evt_"),
        "object": "event",
        "api_version": LEGACY_API_VERSION if c.legacy else CURRENT_API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": _id("req_", 14), "idempotency_key": str(uuid.uuid4())},
        "type": event_type,
    }
