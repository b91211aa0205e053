"""`python -m receiver send`: build a realistic signed Stripe event and POST it, as `stripe trigger` would."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

from receiver.sample_events import build_event
from receiver.signing import signature_header


def post_event(url: str, event: dict, secret: str, timeout: float = 10.0) -> tuple[int, str]:
    payload = json.dumps(event, indent=2).encode()
    request = urllib.request.Request(
        url,
        data=payload,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": signature_header(payload, secret),
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def stable_ids(community: str | None) -> dict[str, str]:
    """The same customer and subscription for every event sent for one community, so that
    `send checkout.session.completed` then `send customer.subscription.deleted` tell one story."""
    if community is None:
        return {}
    digest = hashlib.sha256(f"community:{community}".encode()).hexdigest()
    return {
        "customer_id": f"cus_{digest[:14]}",
        "subscription_id": f"sub_{digest[14:38]}",
        "price_id": f"price_{digest[38:62]}",
    }


def send(url: str, secret: str, event_type: str, community: str | None, tier: str | None, api_version: str):
    event = build_event(event_type, community, tier=tier, api_version=api_version, **stable_ids(community))
    status, body = post_event(url, event, secret)
    return event, status, body
