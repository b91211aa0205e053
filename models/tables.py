"""The three tables. Times are stored as naive UTC datetimes; `last_event_created` as Stripe's epoch seconds."""

from __future__ import annotations

import enum
from typing import Any

import peewee

from billing import community
from billing.clock import utcnow
from models.db import database_proxy


class BaseModel(peewee.Model):
    id = peewee.AutoField()  # what peewee would add anyway; declared so type checkers know it

    class Meta:
        database = database_proxy
        legacy_table_names = False


class WordField(peewee.CharField):
    """A column of one of billing.vocabulary's words (a status): given an enum member, it stores the member's
    plain value ("active"), whatever a database driver would make of a str subclass."""

    def adapt(self, value: Any) -> Any:
        return super().adapt(value.value if isinstance(value, enum.Enum) else value)


class Subscription(BaseModel):
    community_id = peewee.CharField(max_length=community.MAX_LENGTH, unique=True)
    stripe_customer_id = peewee.CharField(max_length=255, null=True, index=True)
    stripe_subscription_id = peewee.CharField(max_length=255, null=True, index=True)
    tier = peewee.CharField(max_length=64)
    status = WordField(max_length=32)  # billing.vocabulary.Status
    grace_until = peewee.DateTimeField(null=True)
    current_period_start = peewee.DateTimeField(null=True)
    current_period_end = peewee.DateTimeField(null=True)
    last_event_created = peewee.BigIntegerField(default=0)  # of the current stripe_subscription_id's events
    # The newest invoice of the current subscription known to be paid (a checkout's first invoice, or the
    # session's id when it names none): a failed attempt of a paid invoice changes nothing, and a first
    # invoice failing on a subscription never paid grants no grace.
    last_paid_invoice_id = peewee.CharField(max_length=255, null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "subscriptions"
        indexes = ((("status", "grace_until"), False),)


class WebhookEvent(BaseModel):
    stripe_event_id = peewee.CharField(max_length=255, unique=True)
    event_type = peewee.CharField(max_length=255, index=True)
    status = WordField(max_length=16, index=True)  # billing.vocabulary.EventStatus
    error_message = peewee.TextField(null=True)
    received_at = peewee.DateTimeField(default=utcnow)
    processed_at = peewee.DateTimeField(null=True)
    # The community whose subscription the event changed: a redelivery recognised as applied still drops
    # that community's cached entitlements (the crash may have come between the commit and the drop).
    community_id = peewee.CharField(max_length=community.MAX_LENGTH, null=True)

    class Meta:
        table_name = "webhook_events"


class DeferredEvent(BaseModel):
    """An invoice or subscription event that names no community, for a subscription no checkout has linked
    yet: kept until one does (then applied in `created` order), or dropped after DEFERRED_MAX_AGE."""

    stripe_event_id = peewee.CharField(max_length=255, unique=True)
    stripe_subscription_id = peewee.CharField(max_length=255, index=True)
    event_type = peewee.CharField(max_length=255)
    created = peewee.BigIntegerField(index=True)  # the event's, epoch seconds
    payload = peewee.TextField()  # the event as Stripe sent it
    received_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "deferred_events"


class AuditLog(BaseModel):
    id = peewee.BigAutoField()
    event_type = peewee.CharField(max_length=64, index=True)
    community_id = peewee.CharField(max_length=community.MAX_LENGTH, null=True, index=True)
    event_data = peewee.TextField()  # JSON
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "billing_audit_log"


ALL_TABLES = (Subscription, WebhookEvent, AuditLog, DeferredEvent)
