"""Stripe-Signature verification against every configured secret (several while a secret is rolled)."""
from __future__ import annotations

import stripe


class SignatureRejected(Exception):
    """The request is not provably from Stripe. `reason` is missing, malformed, mismatch or expired."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def verify(payload: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int) -> None:
    """Return if any secret verifies `header` for `payload` within `tolerance` seconds, else raise."""
    if not header:
        raise SignatureRejected("missing", "no Stripe-Signature header")
    if not header.isascii():  # Stripe's is t=<digits>,v1=<hex>; hmac.compare_digest raises on non-ASCII text
        raise SignatureRejected("malformed", "Stripe-Signature header is not ASCII")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureRejected("malformed", "body is not UTF-8, so it cannot be what Stripe signed") from None
    expired = False
    for secret in secrets:
        try:
            # stripe checks the timestamp only when given a tolerance; 0 turns the check off.
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance or None)
            return
        except (TypeError, ValueError, OverflowError):  # whatever else an odd header makes the library raise
            raise SignatureRejected("malformed", "Stripe-Signature header has no t=... and v1=... parts") from None
        except stripe.SignatureVerificationError as exc:
            message = str(exc.user_message or exc)
            if message.startswith(("Unable to extract", "No signatures found with expected scheme")):
                raise SignatureRejected("malformed", "Stripe-Signature header has no t=... and v1=... parts") from None
            expired = expired or message.startswith("Timestamp outside the tolerance zone")
    if expired:
        raise SignatureRejected("expired", f"signature timestamp is more than {tolerance}s old")
    raise SignatureRejected("mismatch", "signature does not match the payload for any configured secret")
