"""What every command line of ours shares: one configuration precedence (the environment wins over `.env`, which
wins over defaults), `--version`, logging, and durations written with units."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

import click
from dotenv import load_dotenv

from billing import logs

DISTRIBUTION = "stripe-billing-pipeline"
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def load_env_file(path: str = ".env") -> None:
    """Fill what the environment does not set from `.env` in the working directory (bin/run keeps its local
    webhook secret there). A variable set in the environment, even to an empty value, wins."""
    load_dotenv(os.path.join(os.getcwd(), path), override=False)


def entry_point(prog_name: str) -> Callable[[click.Group], click.Group]:
    """Give a click group the common start: `.env` loaded, --version, logging configured."""
    return functools.partial(_entry_point, prog_name=prog_name)


def _entry_point(group: click.Group, prog_name: str) -> click.Group:
    callback = group.callback
    assert callback is not None, f"{prog_name}: the group needs a callback"

    @functools.wraps(callback)
    def start(*args: Any, **kwargs: Any) -> Any:
        load_env_file()
        logs.configure()
        return callback(*args, **kwargs)

    group.callback = start
    return click.version_option(version(), "--version", prog_name=prog_name)(group)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """A duration with a unit, in milliseconds: `1500ms`, `30s`, `5m`, `2h`, `1d`; a bare number is milliseconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _DURATION.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a duration: a number with ms, s, m, h or d (5m, 30s, 1500ms)", param, ctx)
        return int(float(match.group(1)) * _UNITS_MS[match.group(2) or "ms"])


DURATION = Duration()


def with_duration_help(text: str) -> str:
    return f"{text} (with a unit: 1500ms, 30s, 5m, 2h; a bare number is ms)"
