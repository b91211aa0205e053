"""The tables at schema version 1, which migration step 1 creates: a frozen copy of `models/tables.py` as it was
when migrations became versioned. Never edit them: later steps change the schema from here, so step 1 must create
what it always created, whatever `tables.py` has become."""

from __future__ import annotations

import peewee

from billing.clock import utcnow


class _Table(peewee.Model):
    class Meta:
        legacy_table_names = False  # no database: the migration gives its own


class Subscription(_Table):
    community_id = peewee.CharField(max_length=128, unique=True)
    stripe_customer_id = peewee.CharField(max_length=255, null=True, index=True)
    stripe_subscription_id = peewee.CharField(max_length=255, null=True, index=True)
    tier = peewee.CharField(max_length=64)
    status = peewee.CharField(max_length=32)
    grace_until = peewee.DateTimeField(null=True)
    current_period_start = peewee.DateTimeField(null=True)
    current_period_end = peewee.DateTimeField(null=True)
    last_event_created = peewee.BigIntegerField(default=0)
    last_paid_invoice_id = peewee.CharField(max_length=255, null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "subscriptions"
        indexes = ((("status", "grace_until"), False),)


class WebhookEvent(_Table):
    stripe_event_id = peewee.CharField(max_length=255, unique=True)
    event_type = peewee.CharField(max_length=255, index=True)
    status = peewee.CharField(max_length=16, index=True)
    error_message = peewee.TextField(null=True)
    received_at = peewee.DateTimeField(default=utcnow)
    processed_at = peewee.DateTimeField(null=True)
    community_id = peewee.CharField(max_length=128, null=True)

    class Meta:
        table_name = "webhook_events"


class DeferredEvent(_Table):
    stripe_event_id = peewee.CharField(max_length=255, unique=True)
    stripe_subscription_id = peewee.CharField(max_length=255, index=True)
    event_type = peewee.CharField(max_length=255)
    created = peewee.BigIntegerField(index=True)
    payload = peewee.TextField()
    received_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "deferred_events"


class AuditLog(_Table):
    id = peewee.BigAutoField()
    event_type = peewee.CharField(max_length=64, index=True)
    community_id = peewee.CharField(max_length=128, null=True, index=True)
    event_data = peewee.TextField()
    created_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "billing_audit_log"


TABLES = (Subscription, WebhookEvent, AuditLog, DeferredEvent)
