"""Configuration: read once from the environment into one typed, validated object."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Callable, TypeVar

import redis

from billing.keys import Keys
from billing.tiers import TierFileError, TierMatrix

T = TypeVar("T")


# REDIS_URL schemes of a Redis Cluster.
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


class ConfigError(ValueError):
    """A variable of the environment has a value we cannot use; the message names it, and shows a
    secret only by its first few characters and a URL without its password (see `shown`)."""


# Variables whose whole value is a secret. A name ending in _SECRET, _TOKEN, _API_KEY or _PASSWORD is
# one too, so a variable added later (STRIPE_API_KEY) is covered without being listed.
SECRET_VARIABLES = frozenset({"STRIPE_WEBHOOK_SECRET", "API_TOKEN", "STRIPE_API_KEY"})
_SECRET_SUFFIXES = ("_SECRET", "_TOKEN", "_API_KEY", "_PASSWORD")
_PREFIX_CHARS = 8
MAX_REDIS_WAIT_MS = 4000


def is_secret_variable(name: str) -> bool:
    return name in SECRET_VARIABLES or name.endswith(_SECRET_SUFFIXES)


def short(secret: str) -> str:
    """The first few characters of a secret and '…': enough to tell `sk_live_` from `whsec_`, never the
    secret (at most 8 characters, and at most half of a short one)."""
    return secret[: min(_PREFIX_CHARS, len(secret) // 2)] + "…"


# `password=`, and any `<something>_password=` (a Sentinel URL's `sentinel_password=`).
_PASSWORD_PARAM = re.compile(r"(?i)([?&;](?:[a-z]+_)*(?:password|passwd|pass|pwd)=)[^&;#]*")


def redact_url(url: str) -> str:
    """The URL fit for a terminal, a log or an error answer: the password becomes ***
    (`redis://:hunter2@host` -> `redis://:***@host`, `postgresql://u:pw@h/db` -> `postgresql://u:***@h/db`),
    and so does a `password=` query parameter. The userinfo runs to the last '@', so a password pasted
    unencoded with '/', '#', '?' or '@' in it is hidden whole too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = _PASSWORD_PARAM.sub(r"\1***", rest)  # first: a query password may hold an unencoded '@'
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{host}"
    return f"{scheme}{sep}{rest}"


def url_passwords(url: str) -> list[str]:
    """The password(s) a URL carries, as written and percent-decoded (empty when it has none)."""
    scheme, sep, rest = url.partition("://")
    rest = rest if sep else url
    found = []
    userinfo, at, _ = rest.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found += [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(rest)]
    found += [urllib.parse.unquote(p) for p in found]
    return sorted({p for p in found if p}, key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """`text` (an error message from redis-py, psycopg2, ...) with every password of `urls` replaced by
    ***, and each URL shown redacted."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, redact_url(url))
        for password in url_passwords(url):
            text = text.replace(password, "***")
    return text


def shown(name: str, raw: str) -> str | None:
    """How a ConfigError shows the value of variable `name`: a secret by its prefix (each of a
    comma-separated list), a URL without its password, anything else as it is. None: not at all (a
    URL variable whose value has no scheme://, so no telling which part is a password)."""
    if is_secret_variable(name):
        return ",".join(short(part.strip()) for part in raw.split(",") if part.strip())
    if name.endswith("_URL"):
        return redact_url(raw) if "://" in raw else None
    return raw


@dataclasses.dataclass(frozen=True)
class Settings:
    # Secrets and the URLs that may carry a password stay out of repr(): a logged or printed Settings
    # shows neither.
    webhook_secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)
    webhook_tolerance: int = 300
    price_tiers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    redis_url: str = dataclasses.field(default="redis://localhost:6379/0", repr=False)
    database_url: str = dataclasses.field(default="sqlite:///var/billing.db", repr=False)
    stream_key: str = "stripe:events"
    consumer_group: str = "billing"
    dead_letter_key: str = "stripe:events:dead"
    key_prefix: str = "billing"
    stream_partitions: int = 1
    consumer_partitions: tuple[int, ...] = ()  # the partitions this consumer reads; () for all of them
    max_deliveries: int = 5
    claim_idle_ms: int = 60_000
    grace_period_hours: float = 24
    entitlement_ttl_seconds: int = 300
    api_token: str = dataclasses.field(default="", repr=False)
    dedupe_ttl_seconds: int = 604_800
    port: int = 8000
    metrics_port: int = 9101
    tiers_file: str = ""
    stream_retention_seconds: int = 86_400
    stripe_api_key: str = dataclasses.field(default="", repr=False)
    stripe_api_base: str = "https://api.stripe.com"
    reconcile_interval_seconds: int = 300
    redis_min_replicas: int = 0  # replicas that must confirm each enqueue (WAIT) before a 200
    redis_wait_ms: int = 500  # how long the enqueue's WAIT waits for them
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
            key_prefix=reader.get("KEY_PREFIX", _key_prefix, defaults.key_prefix),
            stream_partitions=reader.get("STREAM_PARTITIONS", _partitions, defaults.stream_partitions),
            consumer_partitions=reader.get("CONSUMER_PARTITIONS", _partition_list, ()),
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
            stripe_api_key=reader.get("STRIPE_API_KEY", _stripe_api_key, ""),
            stripe_api_base=reader.get("STRIPE_API_BASE", _api_base, defaults.stripe_api_base),
            reconcile_interval_seconds=reader.get(
                "RECONCILE_INTERVAL_SECONDS", _positive_int, defaults.reconcile_interval_seconds
            ),
            redis_min_replicas=reader.get("REDIS_MIN_REPLICAS", _non_negative_int, defaults.redis_min_replicas),
            redis_wait_ms=reader.get("REDIS_WAIT_MS", _wait_ms, defaults.redis_wait_ms),
        )
        unknown = {price: tier for price, tier in settings.price_tiers.items() if tier not in tiers}
        if unknown:
            raise ConfigError(
                f"STRIPE_PRICE_TIERS names tiers not in the tier matrix: "
                f"{', '.join(f'{p}={t}' for p, t in unknown.items())} (tiers: {', '.join(tiers.names)})"
            )
        outside = [p for p in settings.consumer_partitions if p >= settings.stream_partitions]
        if outside:
            raise ConfigError(
                f"CONSUMER_PARTITIONS names partitions there are none of: {', '.join(map(str, outside))} "
                f"(STREAM_PARTITIONS={settings.stream_partitions}: partitions 0 to {settings.stream_partitions - 1})"
            )
        return settings

    def require_webhook_secrets(self) -> None:
        if not self.webhook_secrets:
            raise ConfigError(
                "STRIPE_WEBHOOK_SECRET is not set: give the endpoint's signing secret (whsec_...), "
                "or several separated by commas while rolling a secret"
            )

    def require_stripe_api_key(self) -> None:
        if not self.stripe_api_key:
            raise ConfigError(
                "STRIPE_API_KEY is not set: give a secret key (sk_...) or a restricted key (rk_...) with read "
                "access to Events (and to Subscriptions for `reconcile subscriptions`)"
            )

    @property
    def grace_period_seconds(self) -> int:
        return int(self.grace_period_hours * 3600)

    @property
    def keys(self) -> Keys:
        """The names of every Redis key this deployment uses."""
        return Keys(
            prefix=self.key_prefix,
            stream=self.stream_key,
            dead_letters=self.dead_letter_key,
            partitions=self.stream_partitions,
            tagged=self.redis_cluster or self.stream_partitions > 1,
        )

    @property
    def redis_cluster(self) -> bool:
        """REDIS_URL names a Redis Cluster (redis+cluster://, rediss+cluster://): its keys are hash-tagged."""
        return self.redis_url.startswith(CLUSTER_SCHEMES)

    @property
    def read_partitions(self) -> tuple[int, ...]:
        """The partitions this consumer reads: CONSUMER_PARTITIONS, or all of them."""
        return self.consumer_partitions or tuple(range(self.stream_partitions))


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
            value = shown(name, raw.strip())
            which = name if value is None else f"{name}={value!r}"
            raise ConfigError(f"{which} is not valid: {_hidden(name, raw, str(exc))}") from None


def _hidden(name: str, raw: str, reason: str) -> str:
    """A parser's reason with the variable's secret parts taken out, whatever the parser put in it."""
    if is_secret_variable(name):
        for part in sorted({raw, raw.strip(), *raw.split(",")}, key=len, reverse=True):
            if len(part.strip()) >= 2:
                reason = reason.replace(part.strip(), short(part.strip()))
        return reason
    if name.endswith("_URL"):
        return scrub(reason, raw.strip()) if "://" in raw else reason.replace(raw.strip(), "…")
    return reason


def _secrets(raw: str) -> tuple[str, ...]:
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    for number, secret in enumerate(secrets, 1):
        if not secret.startswith("whsec_"):
            which = f"secret {number} of {len(secrets)} ({short(secret)})" if len(secrets) > 1 else short(secret)
            what = "is an API key" if secret.startswith(("sk_", "rk_", "pk_")) else "does not start with 'whsec_'"
            raise ValueError(f"{which} {what}: give the endpoint's signing secret (whsec_...) from Stripe's dashboard")
    return secrets


def _stripe_api_key(raw: str) -> str:
    if raw.startswith("whsec_"):
        raise ValueError(
            "is a webhook signing secret (that is STRIPE_WEBHOOK_SECRET): give an API key, sk_... "
            "or a restricted rk_... with read access to Events"
        )
    if raw.startswith("pk_"):
        raise ValueError(
            "is a publishable key, which cannot read events: give a secret key (sk_...) or a restricted key (rk_...)"
        )
    if not raw.startswith(("sk_", "rk_")) or any(ch.isspace() for ch in raw):
        raise ValueError("expected a secret key (sk_...) or a restricted key (rk_...) from Stripe's dashboard")
    return raw


def _api_base(raw: str) -> str:
    """Stripe's API address, or a test server's: scheme and host (and port), no path."""
    parts = urllib.parse.urlsplit(raw)
    _port_of(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ValueError("expected an address like https://api.stripe.com (scheme, host and port only)")
    return raw.rstrip("/")


def _price_tiers(raw: str) -> dict[str, str]:
    mapping = {}
    for pair in filter(None, (part.strip() for part in raw.split(","))):
        price, sep, tier = pair.partition("=")
        if not sep or not price.strip():
            raise ValueError(f"expected price_id=tier pairs, got {pair!r}")
        mapping[price.strip()] = tier.strip()
    return mapping


REDIS_URL_FORMS = (
    "redis://[user:password@]host:port[/db] (rediss:// for TLS) or unix:///path/to/redis.sock for one Redis; "
    "redis+cluster://[user:password@]host:port[,host:port...] (rediss+cluster:// for TLS) for a Redis Cluster; "
    "redis+sentinel://[user:password@]host:port[,host:port...]/<service name>[/<db>][?sentinel_password=...] "
    "(rediss+sentinel:// for TLS) for Redis Sentinel"
)
_DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}


class RedisTopology(str, enum.Enum):
    """What REDIS_URL names: one Redis, a Redis Cluster, or the primary that Redis Sentinel points to."""

    SINGLE = "single"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class RedisAddress:
    """REDIS_URL, read. For a single Redis only `url` and `topology` matter: redis-py reads the URL itself."""

    topology: RedisTopology
    url: str = dataclasses.field(repr=False)
    nodes: tuple[tuple[str, int], ...] = ()  # a Cluster's startup nodes, or the Sentinels
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)  # the Redis servers' (not the Sentinels')
    tls: bool = False
    service: str = ""  # Sentinel: the monitored primary's name
    db: int = 0
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)


def parse_redis_url(url: str) -> RedisAddress:
    """REDIS_URL in any of its forms (REDIS_URL_FORMS); ValueError, with no password in it, when it is none."""
    scheme, _, rest = url.partition("://")
    if scheme in ("redis", "rediss", "unix"):
        _port_of(url)
        redis.connection.parse_url(url)  # the query's options ("Invalid value for 'db' in connection URL.")
        return RedisAddress(RedisTopology.SINGLE, url)
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in _DEFAULT_PORTS or "://" not in url:
        raise ValueError(f"expected one of: {REDIS_URL_FORMS}")
    userinfo, at, tail = rest.rpartition("@")
    hosts, _, query = tail.partition("?")
    hosts, _, path = hosts.partition("/")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    nodes = tuple(_node(part, number, _DEFAULT_PORTS[kind]) for number, part in enumerate(hosts.split(","), 1))
    options = {name: values[-1] for name, values in urllib.parse.parse_qs(query, keep_blank_values=True).items()}
    allowed = {"sentinel_password"} if kind == "sentinel" else set()
    unknown = sorted(set(options) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "no options"
        raise ValueError(f"unknown option {unknown[0]!r} in the query: a {scheme}:// URL takes {takes}")
    service, db = "", 0
    if kind == "sentinel":
        service, _, db_text = path.partition("/")
        if not service:
            raise ValueError(
                "name the service Sentinel monitors: redis+sentinel://host:port,.../<service name>[/<db>] "
                "(and percent-encode a '@' in a password)"
            )
        db = _db(db_text)
    elif path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has only database 0: give no /<db>, or /0")
    return RedisAddress(
        RedisTopology(kind),
        url,
        nodes=nodes,
        username=urllib.parse.unquote(username) or None,
        password=urllib.parse.unquote(password) or None,
        tls=base == "rediss",
        service=urllib.parse.unquote(service),
        db=db,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _node(part: str, number: int, default_port: int) -> tuple[str, int]:
    """One host:port of a comma-separated list ([::1]:port for IPv6)."""
    host, colon, port = part.strip().rpartition(":")
    if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port = part.strip(), str(default_port)
    host = host.strip("[]")
    if not host:
        raise ValueError(f"host {number} is empty: expected host:port[,host:port...]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"the port of host {number} is not a number from 1 to 65535 (or a password holds '/', '?', '#' or '@' "
            "unencoded: percent-encode it)"
        )
    return host, int(port)


def _db(text: str) -> int:
    text = text.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError("the database after the service name must be a number (…/<service name>/<db>)")
    return int(text)


def _redis_url(raw: str) -> str:
    parse_redis_url(raw)
    return raw


def _wait_ms(raw: str) -> int:
    value = int(raw)
    if not 0 < value <= MAX_REDIS_WAIT_MS:
        raise ValueError(
            f"must be a whole number of milliseconds from 1 to {MAX_REDIS_WAIT_MS} (0 would make WAIT block forever; "
            "the answer must come back within the 5 s the consumer's commands wait for Redis)"
        )
    return value


def _database_url(raw: str) -> str:
    scheme = raw.partition("://")[0].split("+")[0]
    if scheme not in ("sqlite", "postgres", "postgresql", "postgresext", "postgresqlext"):
        raise ValueError("expected sqlite:///path or postgresql://user@host/db")
    _port_of(raw)  # here, not as a traceback when the first connection is made
    return raw


def _port_of(url: str) -> None:
    """Refuse a port that is not a number, in words of our own: urllib's message quotes what it took for
    the port, which is part of the password when a password has an unencoded '/' in it."""
    try:
        urllib.parse.urlsplit(url).port
    except ValueError:
        raise ValueError(
            "the host's port is not a number from 0 to 65535 (or a password holds '/', '?', '#' "
            "or '@' unencoded: percent-encode it)"
        ) from None


def _name(raw: str) -> str:
    if any(ch.isspace() for ch in raw):
        raise ValueError("must not contain spaces")
    return raw


def _key_prefix(raw: str) -> str:
    _name(raw)
    if raw.endswith(":"):
        raise ValueError("must not end with ':' (the keys add their own: KEY_PREFIX=acme names acme:sweep:lock, ...)")
    return raw


def _partitions(raw: str) -> int:
    value = _positive_int(raw)
    if value > 1024:
        raise ValueError("must be a whole number from 1 to 1024")
    return value


def _partition_list(raw: str) -> tuple[int, ...]:
    """`0,2`: partition numbers, comma-separated (an empty value: all of them)."""
    try:
        numbers = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ValueError("expected partition numbers separated by commas, e.g. 0,2") from None
    if any(n < 0 for n in numbers):
        raise ValueError("partition numbers start at 0")
    return tuple(sorted(set(numbers)))


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
