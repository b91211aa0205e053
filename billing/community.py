"""The one rule for community ids, used by the API, its OpenAPI document and the consumer alike: whatever the
consumer can store, the API can read. No `:` or `/`, so an id can never name another kind of Redis key or
another URL path; ASCII only, so SQLite and PostgreSQL compare and limit it the same way."""

from __future__ import annotations

import re

MAX_LENGTH = 128
PATTERN = rf"^[A-Za-z0-9_.-]{{1,{MAX_LENGTH}}}$"
RULE = f"1-{MAX_LENGTH} of ASCII letters, digits, '_', '.' or '-'"
_COMMUNITY_ID = re.compile(PATTERN)


class InvalidCommunityId(ValueError):
    """A community id that breaks the rule; the message quotes it (shortened) and states the rule."""


def is_valid(community_id: str) -> bool:
    # fullmatch, not match: `$` also matches before a final newline.
    return isinstance(community_id, str) and _COMMUNITY_ID.fullmatch(community_id) is not None


def check(community_id: str) -> str:
    """The id itself, or InvalidCommunityId."""
    if not is_valid(community_id):
        shown = community_id if len(community_id) <= 40 else community_id[:40] + "..."
        raise InvalidCommunityId(f"community_id {shown!r} breaks the rule: {RULE}")
    return community_id
