"""receiver.signature on its own: the reason a signature fails comes from the header and the clock, never from
the wording of the stripe library's messages."""

from __future__ import annotations

import pytest
import stripe

from receiver.signature import SignatureRejected, verify
from receiver.signing import signature_header

SECRET, OTHER = "whsec_one", "whsec_two"
BODY = b'{"id": "evt_1", "type": "invoice.paid"}'
NOW = 1_800_000_000


@pytest.fixture(params=["as released", "reworded"])
def library(request, monkeypatch):
    """The stripe library as released, and one whose error messages say something else entirely."""
    if request.param == "reworded":
        original = stripe.WebhookSignature.verify_header

        def reworded(*args, **kwargs):
            try:
                return original(*args, **kwargs)
            except stripe.SignatureVerificationError as exc:
                raise stripe.SignatureVerificationError("Die Signatur passt nicht", exc.sig_header) from None

        monkeypatch.setattr(stripe.WebhookSignature, "verify_header", reworded)


def reason(header, secrets=(SECRET,), tolerance=300, body=BODY):
    try:
        verify(body, header, secrets, tolerance, now=NOW)
    except SignatureRejected as exc:
        return exc.reason
    return "ok"


@pytest.mark.parametrize(
    "header,expected",
    [
        (None, "missing"),
        ("", "missing"),
        ("garbage", "malformed"),
        ("t=abc,v1=00", "malformed"),
        (f"t={NOW}", "malformed"),
        (f"v1={'0' * 64}", "malformed"),
        (f"t={NOW},v1={'0' * 64}", "mismatch"),
    ],
)
def test_reasons_from_the_header(library, header, expected):
    assert reason(header) == expected


def test_a_good_signature_passes_with_either_secret(library):
    assert reason(signature_header(BODY, SECRET, NOW)) == "ok"
    assert reason(signature_header(BODY, OTHER, NOW), secrets=(SECRET, OTHER)) == "ok"
    assert reason(signature_header(BODY, OTHER, NOW)) == "mismatch"
    assert reason(signature_header(BODY + b" ", SECRET, NOW)) == "mismatch"


def test_only_a_matching_signature_is_called_expired(library):
    stale = NOW - 301
    assert reason(signature_header(BODY, SECRET, stale)) == "expired"
    assert reason(signature_header(BODY, OTHER, stale)) == "mismatch"  # forged and old: a mismatch
    assert reason(signature_header(BODY, SECRET, stale), tolerance=0) == "ok"  # 0 turns the check off
    assert reason(signature_header(BODY, SECRET, NOW - 300)) == "ok"
