"""Settings.from_env: every value checked at start-up, every error naming its variable."""
from __future__ import annotations

import pytest

from models.config import ConfigError, Settings

BAD_VALUES = [
    ("MAX_DELIVERIES", "abc"),
    ("MAX_DELIVERIES", "0"),
    ("STRIPE_PRICE_TIERS", "price_1=pro"),
    ("STRIPE_PRICE_TIERS", "price_1"),
    ("STRIPE_PRICE_TIERS", "=premium"),
    ("REDIS_URL", "http://x"),
    ("DATABASE_URL", "mysql://db/billing"),
    ("STRIPE_WEBHOOK_SECRET", "notwhsec"),
    ("STRIPE_WEBHOOK_SECRET", "whsec_good,sk_test_oops"),
    ("STRIPE_WEBHOOK_TOLERANCE", "-1"),
    ("STRIPE_WEBHOOK_TOLERANCE", "5m"),
    ("CLAIM_IDLE_MS", "1.5"),
    ("GRACE_PERIOD_HOURS", "-2"),
    ("GRACE_PERIOD_HOURS", "nan"),
    ("GRACE_PERIOD_HOURS", "inf"),
    ("GRACE_PERIOD_HOURS", "1e400"),
    ("ENTITLEMENT_TTL_SECONDS", "0"),
    ("DEDUPE_TTL_SECONDS", "forever"),
    ("PORT", "70000"),
    ("PORT", "0"),
    ("METRICS_PORT", "-1"),
    ("STREAM_KEY", "stripe events"),
    ("CONSUMER_GROUP", "bill ing"),
    ("DEAD_LETTER_KEY", "dead\tletters"),
]


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert name in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.webhook_secrets == ()
    assert settings.webhook_tolerance == 300
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.database_url == "sqlite:///var/billing.db"
    assert (settings.stream_key, settings.consumer_group, settings.dead_letter_key) == (
        "stripe:events", "billing", "stripe:events:dead")
    assert (settings.max_deliveries, settings.claim_idle_ms) == (5, 60_000)
    assert (settings.grace_period_hours, settings.entitlement_ttl_seconds) == (24, 300)
    assert (settings.dedupe_ttl_seconds, settings.port, settings.metrics_port) == (604_800, 8000, 9101)
    assert settings.api_token == "" and settings.tiers_file == "" and dict(settings.price_tiers) == {}


def test_blank_values_fall_back_to_defaults():
    assert Settings.from_env({"MAX_DELIVERIES": "  ", "REDIS_URL": "", "PORT": " "}) == Settings()


def test_good_values_are_parsed():
    settings = Settings.from_env({
        "STRIPE_WEBHOOK_SECRET": " whsec_old , whsec_new ,",
        "STRIPE_WEBHOOK_TOLERANCE": "0",
        "STRIPE_PRICE_TIERS": "price_a=premium, price_b = elite",
        "REDIS_URL": "redis://cache:6380/2",
        "DATABASE_URL": "postgresql://billing@db/billing",
        "MAX_DELIVERIES": "3",
        "GRACE_PERIOD_HOURS": "1.5",
        "METRICS_PORT": "0",
        "PORT": "8080",
    })
    assert settings.webhook_secrets == ("whsec_old", "whsec_new")
    assert settings.webhook_tolerance == 0
    assert dict(settings.price_tiers) == {"price_a": "premium", "price_b": "elite"}
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.database_url == "postgresql://billing@db/billing"
    assert settings.max_deliveries == 3
    assert settings.grace_period_seconds == 5400
    assert (settings.metrics_port, settings.port) == (0, 8080)


def test_missing_secret_is_refused_by_name():
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        Settings.from_env({}).require_webhook_secrets()
    Settings.from_env({"STRIPE_WEBHOOK_SECRET": "whsec_x"}).require_webhook_secrets()  # does not raise
