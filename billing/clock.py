"""Time as the pipeline stores and writes it: naive UTC datetimes to the second, ISO-8601 with a Z."""

from __future__ import annotations

import datetime as dt
from typing import overload


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)


ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso(value: dt.datetime | None) -> str | None:
    """ISO-8601 UTC with a Z, as the API and the audit rows write times: 2026-03-16T11:03:41Z."""
    return value.strftime(ISO_FORMAT) if value else None


@overload
def from_epoch(seconds: int | float) -> dt.datetime: ...
@overload
def from_epoch(seconds: None) -> None: ...
def from_epoch(seconds: int | float | None) -> dt.datetime | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc).replace(tzinfo=None)
