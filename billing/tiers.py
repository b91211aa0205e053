"""The tier matrix: tiers from low to high, their member limits and the features each one adds
(a tier has its own features and every lower tier's). The first tier is the free one. A deployment can
replace the default with a JSON or TOML file (TIERS_FILE), validated when the process starts."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

# name, max members (None: unlimited), features first available at this tier
DEFAULT_TIERS: tuple[tuple[str, int | None, tuple[str, ...]], ...] = (
    ("starter", 100, ("discord_bot", "basic_onboarding", "member_profiles")),
    ("basic", 500, ("stats_leaderboard", "position_alerts", "custom_nym")),
    ("premium", 1000, ("nine_tier_system", "custom_pfp", "weekly_digest", "activity_tracking", "score_badge")),
    ("exclusive", 2500, ("admin_analytics", "naib_dynamics", "water_sharer_badge")),
    ("elite", 10000, ("custom_branding", "priority_support", "api_access")),
    ("enterprise", None, ("white_label", "dedicated_support", "custom_integrations")),
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class TierFileError(ValueError):
    """The tier file cannot be used; the message names the file and the bad entry."""


@dataclasses.dataclass(frozen=True)
class Tier:
    name: str
    max_members: int | None  # None: unlimited
    features: tuple[str, ...]  # its own and every lower tier's


@dataclasses.dataclass(frozen=True)
class TierMatrix:
    tiers: tuple[Tier, ...]

    @classmethod
    def build(cls, rows: list[tuple[str, int | None, tuple[str, ...]]]) -> "TierMatrix":
        tiers: list[Tier] = []
        features: list[str] = []
        for name, max_members, added in rows:
            features.extend(f for f in added if f not in features)
            tiers.append(Tier(name, max_members, tuple(features)))
        return cls(tuple(tiers))

    @classmethod
    def default(cls) -> "TierMatrix":
        return cls.build(list(DEFAULT_TIERS))

    @classmethod
    def load(cls, path: str) -> "TierMatrix":
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise TierFileError(f"{path}: cannot read: {exc.strerror}") from None
        return cls.build(_validate(path, _parse(path, raw)))

    @property
    def free(self) -> Tier:
        return self.tiers[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    def get(self, name: str | None) -> Tier | None:
        return next((t for t in self.tiers if t.name == name), None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


def _parse(path: str, raw: bytes) -> Any:
    try:
        if path.endswith(".toml"):
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # the same parser, from PyPI (a dependency on Python 3.10)
                import tomli as tomllib

            return tomllib.loads(raw.decode("utf-8"))
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if path.endswith(".toml") else "JSON"
        raise TierFileError(f"{path}: not valid {kind}: {exc}") from None


def _validate(path: str, data: Any) -> list[tuple[str, int | None, tuple[str, ...]]]:
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), list) or not data["tiers"]:
        raise TierFileError(
            f'{path}: expected a non-empty list "tiers" of {{name, max_members, features}}, '
            "lowest (the free tier) first"
        )
    rows, seen = [], set()
    for i, entry in enumerate(data["tiers"]):
        where = f"{path}: tiers[{i}]"
        if not isinstance(entry, dict):
            raise TierFileError(f"{where}: expected a table/object with name, max_members, features")
        name = entry.get("name")
        where += f" ({name!r})" if isinstance(name, str) else ""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise TierFileError(f"{where}: name must be lowercase letters, digits, '_' or '-'")
        if name in seen:
            raise TierFileError(f"{where}: tier {name!r} is listed twice")
        unknown = set(entry) - {"name", "max_members", "features"}
        if unknown:
            raise TierFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        max_members = entry.get("max_members")
        if max_members is not None and (
            isinstance(max_members, bool) or not isinstance(max_members, int) or max_members < 0
        ):
            raise TierFileError(f"{where}: max_members must be a whole number, 0 or more (or absent/null: unlimited)")
        features = entry.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) and f for f in features):
            raise TierFileError(f"{where}: features must be a list of names")
        seen.add(name)
        rows.append((name, max_members, tuple(features)))
    return rows
