"""Real services for the tests: a redis-server per need, a PostgreSQL schema per test, our own processes."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
SECRET = "whsec_test_secret_for_the_suite"
PG_ADMIN_URL = os.environ.get("TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.02, what: str = "condition"):
    """Poll until `condition()` is truthy and return its value; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # not ready yet (connection refused, table missing, ...)
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A redis-server process on a free port, which a test may stop, kill and start again."""

    def __init__(self, appendonly: bool = False):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="billing-redis-")
        self.port = free_port()
        self.appendonly = appendonly
        self.fsync = "always"  # with appendonly: fsync before answering each write (bin/run's setting)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> "RedisServer":
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.fsync,
                "--logfile", os.path.join(self.dir, "redis.log")]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), what=f"redis-server on {self.port}")
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_reachable() -> bool:
    try:
        import psycopg2

        psycopg2.connect(PG_ADMIN_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def postgres_schema():
    """A fresh schema in the shared test database; yields a DATABASE_URL that uses it."""
    import psycopg2

    schema = f"billing_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


def service_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The environment our processes run with in a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BILLING_", "STRIPE_", "PROMETHEUS_"))}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, STRIPE_WEBHOOK_SECRET=SECRET,
               METRICS_PORT="0", PYTHONUNBUFFERED="1")
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
        self.popen = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO,
                                      stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                      preexec_fn=default_sigint)

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
    wait_for(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200,
             what=f"receiver on {port}: {proc.output()[-2000:]}")
    return proc, base


class PostgresServer:
    """A throwaway PostgreSQL server a test may stop and start (initdb refuses root: run as postgres)."""

    def __init__(self):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        self.bin = Path(bindir)
        self.dir = tempfile.mkdtemp(prefix="billing-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._as_postgres([str(self.bin / "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, args: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, cwd=self.dir)

    def start(self) -> "PostgresServer":
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", self.data, "-o", options, "-l",
                           os.path.join(self.dir, "log"), "-w", "start"])
        return self

    def stop(self) -> None:
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"])

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
