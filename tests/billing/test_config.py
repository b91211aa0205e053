"""Settings.from_env: every value checked at start-up, every error naming its variable."""

from __future__ import annotations

import pytest

from billing.config import ConfigError, Settings

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
    ("KEY_PREFIX", "acme corp"),
    ("KEY_PREFIX", "acme:"),
    ("KEY_PREFIX", ":"),
    ("STRIPE_API_KEY", "whsec_abcdefghijkl"),
    ("STRIPE_API_KEY", "pk_live_abcdefghijkl"),
    ("STRIPE_API_KEY", "not a key"),
    ("STRIPE_API_BASE", "api.stripe.com"),
    ("STRIPE_API_BASE", "https://api.stripe.com/v1"),
    ("STRIPE_API_BASE", "http://127.0.0.1:port"),
    ("RECONCILE_INTERVAL_SECONDS", "0"),
    ("RECONCILE_INTERVAL_SECONDS", "5m"),
    ("REDIS_URL", "redis+cluster://10.0.0.1:port"),
    ("REDIS_URL", "redis+cluster://10.0.0.1:7000,:7001"),
    ("REDIS_URL", "redis+cluster://10.0.0.1:7000/3"),
    ("REDIS_URL", "redis+cluster://10.0.0.1:7000?sentinel_password=x"),
    ("REDIS_URL", "redis+sentinel://10.0.0.1:26379"),
    ("REDIS_URL", "redis+sentinel://10.0.0.1:26379/mymaster/zero"),
    ("REDIS_URL", "redis+sentinel://10.0.0.1:26379/mymaster?socket_timeout=1"),
    ("REDIS_URL", "redis+replica://10.0.0.1:6379"),
    ("REDIS_MIN_REPLICAS", "-1"),
    ("REDIS_MIN_REPLICAS", "one"),
    ("REDIS_WAIT_MS", "0"),
    ("REDIS_WAIT_MS", "4001"),
    ("REDIS_WAIT_MS", "0.5s"),
]


@pytest.mark.parametrize("name,value", BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_a_bad_value_names_its_variable(name, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert name in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_an_unknown_redis_url_scheme_lists_the_accepted_forms():
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({"REDIS_URL": "redis+replica://10.0.0.1:6379"})
    message = str(raised.value)
    for form in ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://", "redis+sentinel://"):
        assert form in message, message
    assert "sentinel_password" in message, message


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://cache:6380/2", dict(topology="single")),
        ("unix:///run/redis.sock?db=1", dict(topology="single")),
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3",
            dict(topology="cluster", nodes=(("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 6379)), tls=False),
        ),
        (
            "rediss+cluster://app:p%40ss@10.0.0.1:7000/0",
            dict(topology="cluster", nodes=(("10.0.0.1", 7000),), username="app", password="p@ss", tls=True),
        ),
        (
            "redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster",
            dict(
                topology="sentinel",
                nodes=(("s1", 26379), ("s2", 26379), ("::1", 26380)),
                username=None,
                password="pw",
                service="mymaster",
                db=0,
                sentinel_password=None,
            ),
        ),
        (
            "rediss+sentinel://s1:26379/billing-primary/3?sentinel_password=s%40nt",
            dict(topology="sentinel", tls=True, service="billing-primary", db=3, sentinel_password="s@nt"),
        ),
    ],
)
def test_redis_url_forms(url, expected):
    from billing.config import parse_redis_url

    address = parse_redis_url(url)
    assert Settings.from_env({"REDIS_URL": url}).redis_url == url
    assert {name: getattr(address, name) for name in expected} == expected
    assert "pw" not in repr(address) and "p@ss" not in repr(address) and "s@nt" not in repr(address)


def test_replica_settings():
    settings = Settings.from_env({"REDIS_MIN_REPLICAS": "2", "REDIS_WAIT_MS": "250"})
    assert (settings.redis_min_replicas, settings.redis_wait_ms) == (2, 250)
    assert (Settings().redis_min_replicas, Settings().redis_wait_ms) == (0, 500)
    assert Settings.from_env({"REDIS_WAIT_MS": "4000"}).redis_wait_ms == 4000


def test_empty_environment_gives_the_documented_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.webhook_secrets == ()
    assert settings.webhook_tolerance == 300
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.database_url == "sqlite:///var/billing.db"
    assert (settings.stream_key, settings.consumer_group, settings.dead_letter_key) == (
        "stripe:events",
        "billing",
        "stripe:events:dead",
    )
    assert settings.key_prefix == "billing"
    assert (settings.max_deliveries, settings.claim_idle_ms) == (5, 60_000)
    assert (settings.grace_period_hours, settings.entitlement_ttl_seconds) == (24, 300)
    assert (settings.dedupe_ttl_seconds, settings.port, settings.metrics_port) == (604_800, 8000, 9101)
    assert settings.api_token == "" and settings.tiers_file == "" and dict(settings.price_tiers) == {}
    assert (settings.stripe_api_key, settings.stripe_api_base) == ("", "https://api.stripe.com")
    assert settings.reconcile_interval_seconds == 300


def test_blank_values_fall_back_to_defaults():
    assert Settings.from_env({"MAX_DELIVERIES": "  ", "REDIS_URL": "", "PORT": " ", "KEY_PREFIX": " "}) == Settings()


def test_good_values_are_parsed():
    settings = Settings.from_env(
        {
            "STRIPE_WEBHOOK_SECRET": " whsec_old , whsec_new ,",
            "STRIPE_WEBHOOK_TOLERANCE": "0",
            "STRIPE_PRICE_TIERS": "price_a=premium, price_b = elite",
            "REDIS_URL": "redis://cache:6380/2",
            "DATABASE_URL": "postgresql://billing@db/billing",
            "MAX_DELIVERIES": "3",
            "GRACE_PERIOD_HOURS": "1.5",
            "METRICS_PORT": "0",
            "PORT": "8080",
        }
    )
    assert settings.webhook_secrets == ("whsec_old", "whsec_new")
    assert settings.webhook_tolerance == 0
    assert dict(settings.price_tiers) == {"price_a": "premium", "price_b": "elite"}
    assert settings.redis_url == "redis://cache:6380/2"
    assert settings.database_url == "postgresql://billing@db/billing"
    assert settings.max_deliveries == 3
    assert settings.grace_period_seconds == 5400
    assert (settings.metrics_port, settings.port) == (0, 8080)


def test_key_prefix_names_the_deployment_keys():
    settings = Settings.from_env({"KEY_PREFIX": " acme:prod ", "STREAM_KEY": "acme:events"})
    assert settings.key_prefix == "acme:prod"
    assert (settings.keys.prefix, settings.keys.stream, settings.keys.dead_letters) == (
        "acme:prod",
        "acme:events",
        "stripe:events:dead",
    )


def test_a_key_prefix_error_says_what_is_wrong():
    with pytest.raises(ConfigError, match=r"KEY_PREFIX='acme:' is not valid: must not end with ':'"):
        Settings.from_env({"KEY_PREFIX": "acme:"})
    with pytest.raises(ConfigError, match=r"KEY_PREFIX='a b' is not valid: must not contain spaces"):
        Settings.from_env({"KEY_PREFIX": "a b"})


def test_stripe_api_settings_are_parsed():
    settings = Settings.from_env(
        {
            "STRIPE_API_KEY": "rk_live_restricted",
            "STRIPE_API_BASE": "http://127.0.0.1:12111/",
            "RECONCILE_INTERVAL_SECONDS": "60",
        }
    )
    assert (settings.stripe_api_key, settings.stripe_api_base) == ("rk_live_restricted", "http://127.0.0.1:12111")
    assert settings.reconcile_interval_seconds == 60 and "rk_live" not in repr(settings)
    settings.require_stripe_api_key()  # does not raise
    with pytest.raises(ConfigError, match="STRIPE_API_KEY is not set"):
        Settings.from_env({}).require_stripe_api_key()


def test_missing_secret_is_refused_by_name():
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        Settings.from_env({}).require_webhook_secrets()
    Settings.from_env({"STRIPE_WEBHOOK_SECRET": "whsec_x"}).require_webhook_secrets()  # does not raise


# --- no secret in an error message -------------------------------------------------------------------------

LIVE_KEY = "sk_live_51HqLyjWDarjtT1zdp7dcXpzy0OZjB6HnSmdkQ7LzVtHbBmGk4"
SECRET_VALUES = [
    # (variable, value, the secret part that must not appear, what must appear instead)
    ("STRIPE_WEBHOOK_SECRET", LIVE_KEY, LIVE_KEY[8:], "sk_live_…"),
    ("STRIPE_WEBHOOK_SECRET", f"whsec_Kd93hF0aLq2xZ7,{LIVE_KEY}", LIVE_KEY[8:], "secret 2 of 2 (sk_live_…)"),
    ("STRIPE_WEBHOOK_SECRET", "rk_test_Zx81nQpLmW03", "Zx81nQpLmW03", "rk_test_…"),
    ("STRIPE_WEBHOOK_SECRET", "hunter2", "hunter2", "hun…"),
    ("STRIPE_API_KEY", "whsec_Kd93hF0aLq2xZ7", "Kd93hF0aLq2xZ7", "whsec_Kd…"),
    ("STRIPE_API_KEY", "pk_live_Zx81nQpLmW03", "Zx81nQpLmW03", "pk_live_…"),
    ("REDIS_URL", "http://:hunter2@cache.internal:6379/0", "hunter2", "http://:***@cache.internal:6379/0"),
    ("REDIS_URL", "redis://:hunter2@cache.internal:port/0", "hunter2", "redis://:***@cache.internal:port/0"),
    ("REDIS_URL", "redis://default:hunter2@cache.internal/0?socket_timeout=soon", "hunter2", "socket_timeout"),
    ("REDIS_URL", "redis://:hun/ter2@cache.internal:6379/0", "hun", "redis://:***@cache.internal:6379/0"),
    ("REDIS_URL", "hunter2@cache.internal", "hunter2", "REDIS_URL"),
    ("REDIS_URL", "redis+cluster://:hunter2@10.0.0.1:port", "hunter2", "redis+cluster://:***@10.0.0.1:port"),
    ("REDIS_URL", "redis+cluster://:hun/ter2@10.0.0.1:7000/5", "hun", "redis+cluster://:***@10.0.0.1:7000/5"),
    ("REDIS_URL", "redis+sentinel://:hunter2@s1:26379", "hunter2", "redis+sentinel://:***@s1:26379"),
    (
        "REDIS_URL",
        "redis+sentinel://s1:26379,s2:26379/mymaster?sentinel_password=hunter2&x=1",
        "hunter2",
        "sentinel_password=***",
    ),
    ("DATABASE_URL", "mysql://u:pw0rd_s3cret@db.internal/billing", "pw0rd_s3cret", "mysql://u:***@db.internal/billing"),
    ("DATABASE_URL", "postgresql://u:pw0rd_s3cret@db.internal:fivefourthreetwo/db", "pw0rd_s3cret", "u:***@"),
    ("DATABASE_URL", "postgresql://u:pw0/rd_s3cret@db.internal:5432/db", "pw0", "u:***@db.internal"),
    ("DATABASE_URL", "mysql://db.internal/db?user=u&password=pw0rd_s3cret", "pw0rd_s3cret", "password=***"),
]


@pytest.mark.parametrize("name,value,secret,instead", SECRET_VALUES, ids=[f"{n}={v}" for n, v, *_ in SECRET_VALUES])
def test_a_bad_value_never_shows_its_secret(name, value, secret, instead):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    message = str(raised.value)
    assert name in message and instead in message, message
    assert secret not in message, message


@pytest.mark.parametrize("value", ["sk_live_" + "x" * 40, "whsec_" + "y" * 30, "z" * 64])
def test_a_future_secret_variable_shows_only_a_prefix(value):
    from billing.config import shown

    for name in ["STRIPE_API_KEY", "API_TOKEN", "STRIPE_WEBHOOK_SECRET", "SOME_NEW_TOKEN"]:
        assert shown(name, value) == value[:8] + "…"
    assert shown("STREAM_KEY", "stripe events") == "stripe events"  # a Redis key name is no secret


@pytest.mark.parametrize(
    "url,expected",
    [
        ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://default:hunter2@host/0", "redis://default:***@host/0"),
        ("rediss://:p@ss/w#rd@host:6380", "rediss://:***@host:6380"),
        ("unix://:hunter2@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis+cluster://u:hunter2@h1:7000,h2:7001", "redis+cluster://u:***@h1:7000,h2:7001"),
        (
            "rediss+sentinel://:pw@s1:26379,s2:26379/svc/1?sentinel_password=sp",
            "rediss+sentinel://:***@s1:26379,s2:26379/svc/1?sentinel_password=***",
        ),
        ("redis+sentinel://s1:26379/svc?sentinel_password=p@ss", "redis+sentinel://s1:26379/svc?sentinel_password=***"),
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///var/billing.db", "sqlite:///var/billing.db"),
    ],
)
def test_redact_url(url, expected):
    from billing.config import redact_url

    assert redact_url(url) == expected


def test_scrub_takes_a_password_out_of_any_message():
    from billing.config import scrub

    url = "postgresql://billing:s3cr%2Ft@db.internal:5432/billing"
    message = f'could not connect to {url}: password "s3cr/t" rejected, s3cr%2Ft'
    scrubbed = scrub(message, url)
    assert "s3cr" not in scrubbed and "postgresql://billing:***@db.internal:5432/billing" in scrubbed


def test_settings_repr_shows_no_secret():
    settings = Settings(
        webhook_secrets=("whsec_abcdefgh12345",),
        api_token="tok3n_value_secret",
        redis_url="redis://:hunter2@h/0",
        database_url="postgresql://u:pw0rd_s3cret@h/db",
    )
    text = repr(settings)
    for secret in ["whsec_abcdefgh12345", "tok3n_value_secret", "hunter2", "pw0rd_s3cret"]:
        assert secret not in text
