"""Starting one of bench/apps.py's baselines under gunicorn with the receiver's own worker count, class and threads
(`receiver serve`'s defaults), so that every server in a comparison runs under the same settings."""

from __future__ import annotations

import urllib.error
import urllib.request

from harness import REPO, Process, free_port, wait_for
from receiver.serve import DEFAULT_THREADS, DEFAULT_WORKERS

PATH = "/webhooks/stripe"


def serve_app(kind: str, env: dict, tmp: str, gunicorn_args: str = "") -> tuple[Process, str]:
    """bench.apps.<kind>() under gunicorn; its process and base URL, once it answers."""
    port = free_port()
    args = [
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(DEFAULT_WORKERS),
        "--worker-class",
        "gthread",
        "--threads",
        str(DEFAULT_THREADS),
        "--no-control-socket",
        *gunicorn_args.split(),
        f"bench.apps:{kind}()",
    ]
    proc = Process(args, {**env, "PYTHONPATH": REPO.as_posix()}, tmp)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(base), what=f"{kind} server: {proc.output()[-1500:]}")
    return proc, base


def _answers(base: str) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(f"{base}{PATH}", b"{}", method="POST"), timeout=1)
    except urllib.error.HTTPError:
        pass
    return True
