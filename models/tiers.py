"""The tier matrix: tiers from low to high, their member limits and the features each one adds."""
from __future__ import annotations

FREE_TIER = "starter"

# tier -> (max members, None for unlimited; features first available at this tier)
DEFAULT_MATRIX: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "starter": (100, ("discord_bot", "basic_onboarding", "member_profiles")),
    "basic": (500, ("stats_leaderboard", "position_alerts", "custom_nym")),
    "premium": (1000, ("nine_tier_system", "custom_pfp", "weekly_digest", "activity_tracking", "score_badge")),
    "exclusive": (2500, ("admin_analytics", "naib_dynamics", "water_sharer_badge")),
    "elite": (10000, ("custom_branding", "priority_support", "api_access")),
    "enterprise": (None, ("white_label", "dedicated_support", "custom_integrations")),
}

TIERS: tuple[str, ...] = tuple(DEFAULT_MATRIX)

STATUSES: tuple[str, ...] = ("active", "past_due", "canceled", "trialing", "unpaid")


def is_tier(value: object) -> bool:
    return isinstance(value, str) and value in DEFAULT_MATRIX
