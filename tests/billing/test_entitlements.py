"""The tier matrix, the effective entitlements of a subscription row at a given moment, how long an answer
may be cached, and TIERS_FILE. Pure: no Redis, no database (rows are unsaved model instances)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from billing.config import ConfigError, Settings
from billing.entitlements import cache_ttl, entitlements, iso
from billing.tiers import TierMatrix
from models.tables import Subscription
from tests.entitlement_helpers import STARTER, TIER_NAMES, expected_tier

MATRIX = TierMatrix.default()
NOW = dt.datetime(2026, 3, 16, 11, 3, 41)  # naive UTC, like the stored times

# CONTRACT.md's Domain section, written out here rather than taken from billing/tiers.py.


def sub(tier="premium", status="active", grace_until=None) -> Subscription:
    return Subscription(community_id="c1", tier=tier, status=status, grace_until=grace_until)


def test_the_default_matrix_is_the_contracts():
    assert MATRIX.names == tuple(TIER_NAMES)
    assert MATRIX.free.name == "starter"
    for name in TIER_NAMES:
        max_members, features = expected_tier(name)
        tier = MATRIX.get(name)
        assert tier.max_members == max_members
        assert list(tier.features) == features  # cumulative, lowest tier's first, no repeats
    assert MATRIX.get("pro") is None and "pro" not in MATRIX and None not in MATRIX


@pytest.mark.parametrize("tier", TIER_NAMES)
@pytest.mark.parametrize("status", ["active", "trialing"])
def test_a_paid_subscription_gets_its_tier_and_every_lower_tiers_features(tier, status):
    max_members, features = expected_tier(tier)
    assert entitlements("c1", sub(tier, status), MATRIX, NOW) == {
        "community_id": "c1",
        "tier": tier,
        "status": status,
        "max_members": max_members,
        "features": features,
        "in_grace_period": False,
        "grace_until": None,
    }


def test_higher_tiers_inherit_and_only_enterprise_is_unlimited():
    answers = [entitlements("c1", sub(tier), MATRIX, NOW) for tier in TIER_NAMES]
    for lower, higher in zip(answers, answers[1:]):
        assert set(lower["features"]) < set(higher["features"])
        assert higher["max_members"] is None or higher["max_members"] > lower["max_members"]
    assert [a["max_members"] is None for a in answers] == [False] * 5 + [True]


def test_no_subscription_is_the_free_starter_tier():
    assert entitlements("c9", None, MATRIX, NOW) == {
        "community_id": "c9",
        "tier": "starter",
        "status": None,
        "max_members": 100,
        "features": STARTER,
        "in_grace_period": False,
        "grace_until": None,
    }


@pytest.mark.parametrize("status", ["canceled", "unpaid"])
def test_ended_subscriptions_get_starter_but_keep_their_status(status):
    answer = entitlements("c1", sub("elite", status), MATRIX, NOW)
    assert (answer["tier"], answer["status"], answer["max_members"], answer["features"]) == (
        "starter",
        status,
        100,
        STARTER,
    )
    assert (answer["in_grace_period"], answer["grace_until"]) == (False, None)


@pytest.mark.parametrize("left", [dt.timedelta(seconds=1), dt.timedelta(hours=23)])
def test_past_due_in_grace_keeps_its_tier(left):
    row = sub("premium", "past_due", grace_until=NOW + left)
    answer = entitlements("c1", row, MATRIX, NOW)
    assert (answer["tier"], answer["status"], answer["max_members"]) == ("premium", "past_due", 1000)
    assert answer["features"] == expected_tier("premium")[1]
    assert (answer["in_grace_period"], answer["grace_until"]) == (True, iso(NOW + left))


@pytest.mark.parametrize("ago", [dt.timedelta(0), dt.timedelta(seconds=1), dt.timedelta(days=30)])
def test_past_due_past_grace_answers_starter_unpaid_without_writing(ago):
    row = sub("premium", "past_due", grace_until=NOW - ago)  # grace ends at grace_until itself
    answer = entitlements("c1", row, MATRIX, NOW)
    assert answer == {
        "community_id": "c1",
        "tier": "starter",
        "status": "unpaid",
        "max_members": 100,
        "features": STARTER,
        "in_grace_period": False,
        "grace_until": None,
    }
    assert (row.status, row.tier, row.grace_until) == ("past_due", "premium", NOW - ago)  # left to the sweep


def test_a_tier_the_matrix_does_not_know_grants_only_the_free_tier():
    answer = entitlements("c1", sub("platinum"), MATRIX, NOW)
    assert (answer["tier"], answer["status"], answer["features"]) == ("starter", "active", STARTER)


def test_iso_times_are_utc_with_a_z():
    assert iso(NOW) == "2026-03-16T11:03:41Z"
    assert iso(NOW.replace(microsecond=999_999)) == "2026-03-16T11:03:41Z"
    assert iso(None) is None


@pytest.mark.parametrize(
    "grace_left,expected",
    [
        (None, 300),  # no grace: the configured TTL
        (dt.timedelta(hours=2), 300),  # grace ends after the TTL: still the TTL
        (dt.timedelta(seconds=10), 10),  # capped at the end of grace
        (dt.timedelta(seconds=9, milliseconds=500), 9),  # rounded down, never past grace_until
        (dt.timedelta(milliseconds=400), 0),  # under a second left: not cached at all
    ],
)
def test_cache_ttl_never_reaches_past_the_end_of_grace(grace_left, expected):
    if grace_left is None:
        answer = entitlements("c1", sub("premium"), MATRIX, NOW)
        assert cache_ttl(answer, 300, NOW) == 300
        return
    grace_until = NOW + dt.timedelta(seconds=10)
    answer = entitlements("c1", sub("premium", "past_due", grace_until), MATRIX, NOW)
    assert cache_ttl(answer, 300, grace_until - grace_left) == expected


# --- TIERS_FILE --------------------------------------------------------------------------------------------

CUSTOM = {
    "tiers": [
        {"name": "free", "max_members": 50, "features": ["chat"]},
        {"name": "pro", "max_members": 1000, "features": ["api_access", "chat"]},
        {"name": "unlimited", "max_members": None, "features": ["white_label"]},
    ]
}
CUSTOM_TOML = """
[[tiers]]
name = "free"
max_members = 50
features = ["chat"]

[[tiers]]
name = "pro"
max_members = 1000
features = ["api_access", "chat"]

[[tiers]]  # no max_members: unlimited (TOML has no null)
name = "unlimited"
features = ["white_label"]
"""


def from_file(tmp_path, name: str, text: str, **env: str) -> Settings:
    path = tmp_path / name
    path.write_text(text)
    return Settings.from_env({"TIERS_FILE": str(path), **env})


@pytest.mark.parametrize("name,text", [("tiers.json", json.dumps(CUSTOM)), ("tiers.toml", CUSTOM_TOML)])
def test_a_tiers_file_replaces_the_matrix(tmp_path, name, text):
    settings = from_file(tmp_path, name, text)
    assert settings.tiers_file == str(tmp_path / name)
    assert settings.tiers.names == ("free", "pro", "unlimited")
    answers = {t: entitlements("c1", sub(t), settings.tiers, NOW) for t in settings.tiers.names}
    assert [(a["max_members"], a["features"]) for a in answers.values()] == [
        (50, ["chat"]),
        (1000, ["chat", "api_access"]),
        (None, ["chat", "api_access", "white_label"]),
    ]
    for gone in ("premium", "starter", None):  # the default tiers are gone; the free one is now "free"
        answer = entitlements("c1", sub(gone) if gone else None, settings.tiers, NOW)
        assert (answer["tier"], answer["max_members"], answer["features"]) == ("free", 50, ["chat"])
    expired = sub("pro", "past_due", grace_until=NOW)
    assert entitlements("c1", expired, settings.tiers, NOW)["tier"] == "free"


def tiers_json(*entries) -> str:
    return json.dumps({"tiers": [{"name": "free", "max_members": 10, "features": []}, *entries]})


BAD_FILES = [
    ("tiers.json", "{not json", ["not valid JSON"]),
    ("tiers.toml", "[[tiers]\nname = 1", ["not valid TOML"]),
    ("tiers.json", json.dumps({"levels": CUSTOM["tiers"]}), ['"tiers"']),
    ("tiers.json", json.dumps({"tiers": []}), ['"tiers"']),
    ("tiers.json", json.dumps([CUSTOM]), ['"tiers"']),
    ("tiers.json", tiers_json("pro"), ["tiers[1]", "table/object"]),
    ("tiers.json", tiers_json({"name": "free", "max_members": 20}), ["tiers[1] ('free')", "listed twice"]),
    ("tiers.json", tiers_json({"name": "pro", "max_members": -1}), ["tiers[1] ('pro')", "max_members"]),
    ("tiers.json", tiers_json({"name": "pro", "max_members": "1000"}), ["tiers[1] ('pro')", "max_members"]),
    ("tiers.json", tiers_json({"name": "pro", "max_members": 10.5}), ["tiers[1] ('pro')", "max_members"]),
    ("tiers.json", tiers_json({"name": "pro", "max_members": True}), ["tiers[1] ('pro')", "max_members"]),
    ("tiers.json", tiers_json({"name": "pro", "features": "api_access"}), ["tiers[1] ('pro')", "features"]),
    ("tiers.json", tiers_json({"name": "pro", "features": ["api", 3]}), ["tiers[1] ('pro')", "features"]),
    ("tiers.json", tiers_json({"name": "pro", "price": 5}), ["tiers[1] ('pro')", "unknown key(s) price"]),
    ("tiers.json", tiers_json({"name": "Pro Plan"}), ["tiers[1]", "name"]),
    ("tiers.json", tiers_json({"name": "pro\n"}), ["tiers[1]", "name"]),
    ("tiers.json", tiers_json({"max_members": 5}), ["tiers[1]", "name"]),
    ("tiers.toml", '[[tiers]]\nname = "free"\nmax_members = -5\n', ["tiers[0] ('free')", "max_members"]),
]


@pytest.mark.parametrize("name,text,fragments", BAD_FILES, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD_FILES)])
def test_a_bad_tiers_file_is_refused_naming_the_file_and_the_entry(tmp_path, name, text, fragments):
    with pytest.raises(ConfigError) as raised:
        from_file(tmp_path, name, text)
    message = str(raised.value)
    assert message.startswith("TIERS_FILE: ") and str(tmp_path / name) in message
    for fragment in fragments:
        assert fragment in message


def test_a_missing_tiers_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^TIERS_FILE: .*nowhere\.json: cannot read"):
        Settings.from_env({"TIERS_FILE": str(tmp_path / "nowhere.json")})


def test_price_tiers_are_checked_against_the_tiers_file(tmp_path):
    settings = from_file(tmp_path, "tiers.json", json.dumps(CUSTOM), STRIPE_PRICE_TIERS="price_p=pro,price_u=unlimited")
    assert settings.price_tiers == {"price_p": "pro", "price_u": "unlimited"}
    with pytest.raises(ConfigError) as raised:  # a default tier the custom file does not have
        from_file(tmp_path, "tiers.json", json.dumps(CUSTOM), STRIPE_PRICE_TIERS="price_p=pro,price_x=premium")
    assert "STRIPE_PRICE_TIERS" in str(raised.value) and "price_x=premium" in str(raised.value)
    assert "price_p=pro" not in str(raised.value)
    with pytest.raises(ConfigError, match="STRIPE_PRICE_TIERS"):  # and without a file, a tier nobody has
        Settings.from_env({"STRIPE_PRICE_TIERS": "price_p=pro"})
