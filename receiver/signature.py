"""Stripe-Signature verification against every configured secret (several while a secret is rolled)."""

from __future__ import annotations

import time

import stripe


class SignatureRejected(Exception):
    """The request is not provably from Stripe. `reason` is missing, malformed, mismatch or expired."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def verify(
    payload: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int, now: float | None = None
) -> None:
    """Return if any secret verifies `header` for `payload` within `tolerance` seconds, else raise.

    Why a signature fails is decided here, from the header's parts and its timestamp, not from the wording of
    the stripe library's errors (a release may reword them); the library does the HMAC comparison."""
    if not header:
        raise SignatureRejected("missing", "no Stripe-Signature header")
    timestamp = _timestamp(header)
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureRejected("malformed", "body is not UTF-8, so it cannot be what Stripe signed") from None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, None)  # None: no timestamp check here
        except stripe.SignatureVerificationError:
            continue
        # Only a signature that matches can be called expired: a forged one is a mismatch, however old.
        if tolerance and timestamp < (time.time() if now is None else now) - tolerance:
            raise SignatureRejected("expired", f"signature timestamp is more than {tolerance}s old")
        return
    raise SignatureRejected("mismatch", "signature does not match the payload for any configured secret")


def _timestamp(header: str) -> int:
    """The header's timestamp, if it has Stripe's shape: `t=<digits>` and at least one `v1=<hex>`."""
    if not header.isascii():  # Stripe's is ASCII; hmac.compare_digest raises on other text
        raise SignatureRejected("malformed", "Stripe-Signature header is not ASCII")
    parts = [part.strip().partition("=") for part in header.split(",")]
    timestamps = [value for key, sep, value in parts if sep and key == "t"]
    signatures = [value for key, sep, value in parts if sep and key == "v1" and value]
    if not timestamps or not timestamps[0].isdigit() or len(timestamps[0]) > 12 or not signatures:
        raise SignatureRejected("malformed", "Stripe-Signature header has no t=<unix time> and v1=<signature> parts")
    return int(timestamps[0])
