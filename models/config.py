"""Configuration: read once from the environment into one typed, validated object."""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Callable, TypeVar

from models.tiers import TierFileError, TierMatrix

T = TypeVar("T")


class ConfigError(ValueError):
    """A variable of the environment has a value we cannot use; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance: int = 300
    price_tiers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "sqlite:///var/billing.db"
    stream_key: str = "stripe:events"
    consumer_group: str = "billing"
    dead_letter_key: str = "stripe:events:dead"
    max_deliveries: int = 5
    claim_idle_ms: int = 60_000
    grace_period_hours: float = 24
    entitlement_ttl_seconds: int = 300
    api_token: str = ""
    dedupe_ttl_seconds: int = 604_800
    port: int = 8000
    metrics_port: int = 9101
    tiers_file: str = ""
    stream_retention_seconds: int = 86_400
    tiers: TierMatrix = dataclasses.field(default_factory=TierMatrix.default)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        tiers_file = reader.get("TIERS_FILE", str.strip, "")
        try:
            tiers = TierMatrix.load(tiers_file) if tiers_file else TierMatrix.default()
        except TierFileError as exc:
            raise ConfigError(f"TIERS_FILE: {exc}") from None
        settings = cls(
            webhook_secrets=reader.get("STRIPE_WEBHOOK_SECRET", _secrets, ()),
            webhook_tolerance=reader.get("STRIPE_WEBHOOK_TOLERANCE", _non_negative_int, defaults.webhook_tolerance),
            price_tiers=reader.get("STRIPE_PRICE_TIERS", _price_tiers, {}),
            redis_url=reader.get("REDIS_URL", _redis_url, defaults.redis_url),
            database_url=reader.get("DATABASE_URL", _database_url, defaults.database_url),
            stream_key=reader.get("STREAM_KEY", _name, defaults.stream_key),
            consumer_group=reader.get("CONSUMER_GROUP", _name, defaults.consumer_group),
            dead_letter_key=reader.get("DEAD_LETTER_KEY", _name, defaults.dead_letter_key),
            max_deliveries=reader.get("MAX_DELIVERIES", _positive_int, defaults.max_deliveries),
            claim_idle_ms=reader.get("CLAIM_IDLE_MS", _positive_int, defaults.claim_idle_ms),
            grace_period_hours=reader.get("GRACE_PERIOD_HOURS", _non_negative_float, defaults.grace_period_hours),
            entitlement_ttl_seconds=reader.get(
                "ENTITLEMENT_TTL_SECONDS", _positive_int, defaults.entitlement_ttl_seconds
            ),
            api_token=reader.get("API_TOKEN", str.strip, ""),
            dedupe_ttl_seconds=reader.get("DEDUPE_TTL_SECONDS", _positive_int, defaults.dedupe_ttl_seconds),
            port=reader.get("PORT", _port, defaults.port),
            metrics_port=reader.get("METRICS_PORT", _port_or_off, defaults.metrics_port),
            tiers_file=tiers_file,
            tiers=tiers,
            stream_retention_seconds=reader.get(
                "STREAM_RETENTION_SECONDS", _positive_int, defaults.stream_retention_seconds
            ),
        )
        unknown = {price: tier for price, tier in settings.price_tiers.items() if tier not in tiers}
        if unknown:
            raise ConfigError(f"STRIPE_PRICE_TIERS names tiers not in the tier matrix: "
                              f"{', '.join(f'{p}={t}' for p, t in unknown.items())} (tiers: {', '.join(tiers.names)})")
        return settings

    def require_webhook_secrets(self) -> None:
        if not self.webhook_secrets:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is not set: give the endpoint's signing secret (whsec_...), "
                "or several separated by commas while rolling a secret"
            )

    @property
    def grace_period_seconds(self) -> int:
        return int(self.grace_period_hours * 3600)


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self.env.get(name, "")
        if raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from None


def _secrets(raw: str) -> tuple[str, ...]:
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ValueError("each secret starts with 'whsec_' (Stripe's endpoint signing secret)")
    return secrets


def _price_tiers(raw: str) -> dict[str, str]:
    mapping = {}
    for pair in filter(None, (part.strip() for part in raw.split(","))):
        price, sep, tier = pair.partition("=")
        if not sep or not price.strip():
            raise ValueError(f"expected price_id=tier pairs, got {pair!r}")
        mapping[price.strip()] = tier.strip()
    return mapping


def _redis_url(raw: str) -> str:
    if not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected redis://, rediss:// or unix://")
    return raw


def _database_url(raw: str) -> str:
    scheme = raw.partition("://")[0].split("+")[0]
    if scheme not in ("sqlite", "postgres", "postgresql", "postgresext", "postgresqlext"):
        raise ValueError("expected sqlite:///path or postgresql://user@host/db")
    return raw


def _name(raw: str) -> str:
    if any(ch.isspace() for ch in raw):
        raise ValueError("must not contain spaces")
    return raw


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a whole number above 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not (value >= 0 and math.isfinite(value)):  # "inf" would pass >= 0, then break int() later
        raise ValueError("must be a number, 0 or more")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port number from 1 to 65535")
    return value


def _port_or_off(raw: str) -> int:
    return 0 if raw == "0" else _port(raw)
