"""Stripe's side of the suite: request headers signed with the suite's secret, and the 50 events captured from
other projects' suites (../shared/fixtures/peer_events/), byte for byte."""

from __future__ import annotations

from harness import REPO, SECRET
from receiver.signing import signature_header

PEER_EVENTS = REPO.parent / "shared" / "fixtures" / "peer_events"


def sign(payload: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    return {"Stripe-Signature": signature_header(payload, secret, timestamp), "Content-Type": "application/json"}


def load_peer_events() -> list[tuple[str, bytes]]:
    """The 50 captured events, byte for byte: (file name, raw body)."""
    files = sorted(p for p in PEER_EVENTS.glob("*.json") if p.name != "index.json")
    assert len(files) == 50, f"expected the 50 peer events in {PEER_EVENTS}, found {len(files)}"
    return [(p.name, p.read_bytes()) for p in files]
