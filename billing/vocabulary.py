"""The pipeline's words, each spelled here once: the subscription statuses we store, what a webhook_events row
says of its event, the outcome the consumer counts and logs for each entry, what the receiver answers for a
verified event, and the Stripe event types we act on. The words are CONTRACT.md's; tests/test_vocabulary.py
pins them.

Every enum subclasses str, so a member is its word wherever a string goes: a column, a JSON answer, a metric
label, a log field, a comparison with what a row or an event holds. `str()` and `format()` (f-strings, `%s`)
give the plain value too, on every Python we support: for a str mixin, Python 3.11 changed what `format()`
gives and 3.12 what f-strings give, and neither would otherwise write "active" but "Status.ACTIVE"."""

from __future__ import annotations

import enum
from typing import TypeVar

_W = TypeVar("_W", bound="Word")


class Word(str, enum.Enum):
    """A str enum whose str() and format() are its value, on Python 3.10 as on 3.11 and later."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def lookup(cls: type[_W], value: object) -> _W | None:
        """The member spelled `value`, or None (before Python 3.12 `value in cls` raises for a non-member)."""
        try:
            return cls(value)
        except ValueError:
            return None


class Status(Word):
    """A subscription's status as we store it (`subscriptions.status`, the API's `status`). Stripe's
    `incomplete`, `incomplete_expired` and `paused` are stored as UNPAID (consumer/handlers.py)."""

    ACTIVE = "active"
    PAST_DUE = "past_due"  # keeps its tier's features until grace_until
    CANCELED = "canceled"
    TRIALING = "trialing"  # stored as such: a trial is not `active`
    UNPAID = "unpaid"


# Paid for (or in a trial): the tier's features are granted and no grace period runs.
PAID_STATUSES: tuple[Status, ...] = (Status.ACTIVE, Status.TRIALING)
# Over: the free tier's entitlements, and another subscription of the community may take over.
ENDED_STATUSES: tuple[Status, ...] = (Status.CANCELED, Status.UNPAID)


class EventStatus(Word):
    """What a `webhook_events` row says of its event."""

    PROCESSED = "processed"  # applied: its effects committed with the row
    IGNORED = "ignored"  # not ours, or about a subscription the community no longer has
    STALE = "stale"  # older than what its subscription has had already
    DEFERRED = "deferred"  # waits in deferred_events for the checkout that links its subscription
    FAILED = "failed"  # its handler (or its row) failed; the entry stays pending and is retried
    DEAD = "dead"  # failed at its MAX_DELIVERIES-th delivery: moved to the dead-letter stream


# A row in one of these states means the event's effects are committed: never apply it again.
FINAL_EVENT_STATUSES: tuple[EventStatus, ...] = (
    EventStatus.PROCESSED,
    EventStatus.IGNORED,
    EventStatus.STALE,
    EventStatus.DEFERRED,
)


class Outcome(Word):
    """What became of one delivered stream entry: the `outcome` label of billing_events_total and the
    `outcome` log field. Its event's row status, or DUPLICATE: an event applied before, acknowledged again with
    no second effect (no row says so). `Outcome(status)` is an EventStatus's outcome."""

    PROCESSED = EventStatus.PROCESSED.value
    IGNORED = EventStatus.IGNORED.value
    STALE = EventStatus.STALE.value
    DEFERRED = EventStatus.DEFERRED.value
    DUPLICATE = "duplicate"
    FAILED = EventStatus.FAILED.value
    DEAD = EventStatus.DEAD.value


# This delivery applied nothing: its entry is retried (failed) or dead-lettered (dead), never just acknowledged.
FAILED_OUTCOMES: tuple[Outcome, ...] = (Outcome.FAILED, Outcome.DEAD)


class Receipt(Word):
    """The receiver's answer to a verified event (the webhook answer's `status`, the `result` label of
    billing_webhook_events_total)."""

    QUEUED = "queued"  # added to the stream now
    DUPLICATE = "duplicate"  # queued or processed before: not added again


class EventType(Word):
    """The Stripe event types we act on; any other is recorded `ignored`."""

    CHECKOUT_COMPLETED = "checkout.session.completed"
    CHECKOUT_ASYNC_PAYMENT_SUCCEEDED = "checkout.session.async_payment_succeeded"
    CHECKOUT_ASYNC_PAYMENT_FAILED = "checkout.session.async_payment_failed"
    INVOICE_PAID = "invoice.paid"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
    SUBSCRIPTION_UPDATED = "customer.subscription.updated"
    SUBSCRIPTION_DELETED = "customer.subscription.deleted"


# The same, as plain strings: for click choices (click 8.2 would show an enum's names) and Stripe's `types[]`.
HANDLED_TYPES: tuple[str, ...] = tuple(event_type.value for event_type in EventType)
