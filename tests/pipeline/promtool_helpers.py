"""Run Debian's (or any) promtool for the observability tests; a missing promtool fails, never skips."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from harness import REPO

ROOT = REPO  # where promtool runs: the paths the tests give it are relative to the project root


def promtool(*args: str | pathlib.Path) -> str:
    """Run `promtool ARGS` in the project root; fail the test with promtool's output unless it succeeds."""
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed, and the dashboard and alert tests need it. "
            "Debian/Ubuntu: sudo apt-get install prometheus",
            pytrace=False,
        )
    result = subprocess.run([exe, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"promtool {' '.join(map(str, args))} failed (exit {result.returncode}):\n{output}", pytrace=False)
    return output
