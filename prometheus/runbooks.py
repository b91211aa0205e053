"""Point every alert's runbook_url at another runbook: a wiki, a fork, the README of a release tag.

Prometheus rule files have no variables, so prometheus/alerts.yml carries whole links, each
RUNBOOK_BASE_URL#anchor: by default the README on the project's repository, whose "Runbook" has a heading
per alert (the anchor is the alert's name in lower case, GitHub's id for that heading). Prometheus loads
the file as it is and Alertmanager's links open. A deployment whose runbook lives elsewhere writes its
own copy with its base (only what stands before each '#' changes):

    python3 prometheus/runbooks.py https://wiki.example.com/billing/runbook > /etc/prometheus/billing-alerts.yml
    RUNBOOK_BASE_URL=https://wiki.example.com/billing/runbook python3 prometheus/runbooks.py > ...

and, to move the default itself (the rules and their unit tests, which spell the links out):

    python3 prometheus/runbooks.py --in-place NEW_BASE prometheus/alerts.yml prometheus/alerts_test.yml

Python's standard library only, so it runs wherever Prometheus's files are prepared. The same with sed, for
a base with no '|', '&' or '\\' in it: sed 's|^\\( *runbook_url: \\)[^#]*|\\1NEW_BASE|' prometheus/alerts.yml
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import urllib.parse

ALERTS = pathlib.Path(__file__).resolve().parent / "alerts.yml"
# `runbook_url: BASE#anchor`, as alerts.yml (and alerts_test.yml's expected annotations) write it: unquoted.
RUNBOOK_URL = re.compile(r"^(?P<key>[ \t]*runbook_url:[ \t]*)(?P<base>[^#\s]*)(?P<anchor>#[\w-]+)[ \t]*$", re.MULTILINE)


class RunbookError(Exception):
    """A base that is no absolute URL, or a file with no runbook link to change."""


def check_base(base: str) -> str:
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or any(c.isspace() for c in base):
        raise RunbookError(
            f"runbook base {base!r}: give an absolute http(s) URL without '#' (each alert "
            "appends #its-name), e.g. https://wiki.example.com/billing/runbook"
        )
    return base


def rebase(text: str, base: str) -> str:
    """`text` with the base of every runbook_url replaced by `base`, and nothing else changed."""
    new, count = RUNBOOK_URL.subn(lambda m: f"{m['key']}{check_base(base)}{m['anchor']}", text)
    if not count:
        raise RunbookError("no 'runbook_url: BASE#anchor' line to change")
    return new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "base",
        nargs="?",
        default=os.environ.get("RUNBOOK_BASE_URL"),
        help="the runbook's URL, without '#' (default: $RUNBOOK_BASE_URL)",
    )
    parser.add_argument(
        "files", nargs="*", type=pathlib.Path, default=[ALERTS], help="rule files (default: prometheus/alerts.yml)"
    )
    parser.add_argument("--in-place", action="store_true", help="rewrite the files instead of printing one")
    args = parser.parse_args(argv)
    if not args.base:
        parser.error("give the runbook's base URL, or set RUNBOOK_BASE_URL")
    if not args.in_place and len(args.files) != 1:
        parser.error("without --in-place, give one file: its copy goes to standard output")
    try:
        for path in args.files:
            text = rebase(path.read_text(encoding="utf-8"), args.base)
            if args.in_place:
                path.write_text(text, encoding="utf-8")
            else:
                sys.stdout.write(text)
    except (RunbookError, OSError) as exc:
        print(f"runbooks.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
