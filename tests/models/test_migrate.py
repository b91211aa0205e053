"""`python -m models migrate` on a database made by an earlier release: the new table and the new nullable
columns are added, old rows are kept, and a second run changes nothing."""
from __future__ import annotations

import subprocess
import sys

from harness import REPO
from models.db import open_database
from models.migrations import migrate
from models.tables import Subscription, WebhookEvent

# The schema as the previous release created it (before deferred events and the columns below).
OLD_SCHEMA = [
    "CREATE TABLE subscriptions (id SERIAL PRIMARY KEY, community_id VARCHAR(128) NOT NULL UNIQUE, "
    "stripe_customer_id VARCHAR(255), stripe_subscription_id VARCHAR(255), tier VARCHAR(64) NOT NULL, "
    "status VARCHAR(32) NOT NULL, grace_until TIMESTAMP, current_period_start TIMESTAMP, "
    "current_period_end TIMESTAMP, last_event_created BIGINT NOT NULL, created_at TIMESTAMP NOT NULL, "
    "updated_at TIMESTAMP NOT NULL)",
    "CREATE TABLE webhook_events (id SERIAL PRIMARY KEY, stripe_event_id VARCHAR(255) NOT NULL UNIQUE, "
    "event_type VARCHAR(255) NOT NULL, status VARCHAR(16) NOT NULL, error_message TEXT, "
    "received_at TIMESTAMP NOT NULL, processed_at TIMESTAMP)",
    "INSERT INTO subscriptions (community_id, tier, status, last_event_created, created_at, updated_at) "
    "VALUES ('42', 'premium', 'active', 5, '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
    "INSERT INTO webhook_events (stripe_event_id, event_type, status, received_at) "
    "VALUES ('evt_old', 'invoice.paid', 'processed', '2026-01-01 00:00:00')",
]


def test_migrate_upgrades_an_old_schema_in_place(database_url):
    db = open_database(database_url)
    for statement in OLD_SCHEMA:
        db.execute_sql(statement.replace("SERIAL", "INTEGER") if database_url.startswith("sqlite") else statement)
    db.close()

    result = subprocess.run([sys.executable, "-m", "models", "migrate"], cwd=REPO, capture_output=True, text=True,
                            env={"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "deferred_events" in result.stdout and "subscriptions.last_paid_invoice_id" in result.stdout
    assert "webhook_events.community_id" in result.stdout

    db = open_database(database_url)
    try:
        sub = Subscription.get(Subscription.community_id == "42")
        assert (sub.tier, sub.status, sub.last_paid_invoice_id) == ("premium", "active", None)
        assert WebhookEvent.get(WebhookEvent.stripe_event_id == "evt_old").community_id is None
        assert migrate(db) == []  # idempotent
    finally:
        db.close()
