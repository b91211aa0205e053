"""Our own commands as child processes, with the environment the tests and benchmarks give them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

from harness.services import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_test_secret_for_the_suite"


def service_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment our processes run with in a test or a benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_", "PROMETHEUS_"))}
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        STRIPE_WEBHOOK_SECRET=SECRET,
        METRICS_PORT="0",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
    )  # a child that crashes in C code says where, in its stderr
    env.update(extra)
    return env


def default_sigint() -> None:
    """In a child before it runs: Ctrl-C's default action, even when the suite runs where SIGINT is ignored (a
    background job of a non-interactive shell), which Python would otherwise keep ignoring, so tests that press
    Ctrl-C (SIGINT) on a command see what a user would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Process:
    """One of our commands as a child process, its output kept in a file for the failure message."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: str):
        self.log_path = os.path.join(log_dir, f"{args[0]}-{uuid.uuid4().hex[:6]}.log")
        self.log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_sigint,
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def wait(self, timeout: float = 30) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.popen.wait()
        self.log.close()


def start_receiver(env: dict[str, str], log_dir: str, workers: int | None = 2) -> tuple[Process, str]:
    """`receiver serve` on a free port; workers=None leaves the count to WEB_CONCURRENCY or gunicorn's config."""
    port = free_port()
    args = ["receiver", "serve", "--bind", f"127.0.0.1:{port}"] + (["--workers", str(workers)] if workers else [])
    proc = Process(args, env, log_dir)
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200,
        what=f"receiver on {port}: {proc.output()[-2000:]}",
    )
    return proc, base
