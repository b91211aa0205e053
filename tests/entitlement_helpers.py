"""The contract's tier matrix as the tests expect it: each tier's members and features."""

from __future__ import annotations

CONTRACT_TIERS = [
    ("starter", 100, ["discord_bot", "basic_onboarding", "member_profiles"]),
    ("basic", 500, ["stats_leaderboard", "position_alerts", "custom_nym"]),
    ("premium", 1000, ["nine_tier_system", "custom_pfp", "weekly_digest", "activity_tracking", "score_badge"]),
    ("exclusive", 2500, ["admin_analytics", "naib_dynamics", "water_sharer_badge"]),
    ("elite", 10000, ["custom_branding", "priority_support", "api_access"]),
    ("enterprise", None, ["white_label", "dedicated_support", "custom_integrations"]),
]
TIER_NAMES = [name for name, _, _ in CONTRACT_TIERS]
STARTER = CONTRACT_TIERS[0][2]


def expected_tier(name: str) -> tuple[int | None, list[str]]:
    """(max_members, every feature of this tier and all below it)."""
    features = []
    for tier, max_members, added in CONTRACT_TIERS:
        features += added
        if tier == name:
            return max_members, features
    raise KeyError(name)
