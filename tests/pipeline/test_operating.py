"""Running it the way operators expect: `bin/run` on another PORT while 8000 is busy, gunicorn tuned the standard
ways (WEB_CONCURRENCY, GUNICORN_CMD_ARGS, a gunicorn.conf.py), one configuration precedence (the environment over
`.env` over defaults), one log format with JSON lines on request, stable consumer names under honcho, console
scripts with --version, durations with units."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from billing.cli_support import DURATION
from consumer.cli import default_name
from harness import (
    REPO,
    SECRET,
    Process,
    free_port,
    service_env,
    start_receiver,
    wait_for,
)
from models.tables import Subscription
from receiver.sample_events import build_event
from receiver.signing import signature_header


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as handle:
                if int(handle.read().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def post(base: str, event: dict, secret: str = SECRET) -> int:
    body = json.dumps(event).encode()
    request = urllib.request.Request(
        f"{base}/webhooks/stripe",
        body,
        method="POST",
        headers={"Stripe-Signature": signature_header(body, secret), "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def process_env(redis_url, sqlite_url):
    """What our processes run with, on the suite's Redis and a SQLite database of the test's own."""
    return service_env(redis_url, sqlite_url)


def test_web_concurrency_sets_the_worker_count(process_env, tmp_path):
    proc, _ = start_receiver({**process_env, "WEB_CONCURRENCY": "3"}, str(tmp_path), workers=None)
    try:
        wait_for(lambda: len(children(proc.popen.pid)) == 3, what=f"three workers: {proc.output()[-1500:]}")
    finally:
        proc.stop()


def test_gunicorn_cmd_args_and_a_config_file_are_honoured(process_env, tmp_path):
    config = tmp_path / "gunicorn.conf.py"
    config.write_text("workers = 1\nthreads = 3\n")
    gunicorn_args = f"--threads 8 --log-level debug --config {config}"
    proc, base = start_receiver({**process_env, "GUNICORN_CMD_ARGS": gunicorn_args}, str(tmp_path), workers=None)
    try:
        wait_for(lambda: "threads: 8" in proc.output(), what="gunicorn's debug configuration dump")
        assert len(children(proc.popen.pid)) == 1  # from the config file
        assert post(base, build_event("invoice.paid", "42")) == 200
    finally:
        proc.stop()


def test_the_access_log_leaves_out_webhooks_answered_200_and_logs_the_rest(process_env, tmp_path):
    proc, base = start_receiver(process_env, str(tmp_path))
    try:
        assert post(base, build_event("invoice.paid", "42")) == 200
        assert post(base, build_event("invoice.paid", "42"), secret="whsec_not_ours") == 400
        urllib.request.urlopen(f"{base}/healthz", timeout=1)
        # Each worker writes its line after it has answered, and the two requests may go to different workers.
        wait_for(lambda: '"GET /healthz HTTP/1.1" 200' in proc.output(), what="the health check's access line")
        wait_for(lambda: '"POST /webhooks/stripe HTTP/1.1" 400' in proc.output(), what="the refused webhook's line")
        assert '"POST /webhooks/stripe HTTP/1.1" 200' not in proc.output()
    finally:
        proc.stop()


def test_the_access_log_can_be_switched_off(process_env, tmp_path):
    port = free_port()
    proc = Process(["receiver", "serve", "--bind", f"127.0.0.1:{port}", "--no-access-log"], process_env, str(tmp_path))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200, what="the receiver")
        assert post(base, build_event("invoice.paid", "42"), secret="whsec_not_ours") == 400
        assert "POST /webhooks/stripe" not in proc.output() and "GET /healthz" not in proc.output()
    finally:
        proc.stop()


def test_json_logs_carry_the_fields_of_what_they_are_about(process_env, redis_server, db, tmp_path):
    json_env = {**process_env, "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}  # a line per event is DEBUG
    receiver, base = start_receiver(json_env, str(tmp_path))
    worker = Process(["consumer", "run", "--name", "json-1", "--block-ms", "100"], json_env, str(tmp_path))
    event = build_event("checkout.session.completed", "j1")
    try:
        assert post(base, event) == 200
        assert post(base, event, secret="whsec_not_ours") == 400  # logged by the access log
        wait_for(lambda: f'"event_id": "{event["id"]}"' in worker.output(), what="the outcome line")
    finally:
        worker.stop()
        receiver.stop()
    lines = [json.loads(line) for line in worker.output().splitlines() if line.strip()]
    [outcome] = [line for line in lines if line.get("event_id") == event["id"]]
    assert outcome["consumer"] == "json-1" and outcome["community_id"] == "j1" and outcome["outcome"] == "processed"
    assert outcome["entry_id"] and outcome["level"] == "DEBUG" and outcome["time"]
    assert all(line["consumer"] == "json-1" for line in lines)
    receiver_lines = [json.loads(line) for line in receiver.output().splitlines() if line.strip()]
    assert any('POST /webhooks/stripe HTTP/1.1" 400' in line["message"] for line in receiver_lines)  # access log
    assert all(SECRET not in json.dumps(line) for line in lines + receiver_lines)
    assert all('"object": "event"' not in line["message"] for line in lines + receiver_lines)  # no payloads


def test_the_environment_wins_over_dotenv_which_wins_over_defaults(process_env, tmp_path):
    proc, base = start_receiver(process_env, str(tmp_path))
    (tmp_path / ".env").write_text(f"STRIPE_WEBHOOK_SECRET=whsec_from_dotenv\nPORT={base.rsplit(':', 1)[1]}\n")
    send = [sys.executable, "-m", "receiver", "send", "invoice.paid", "--community", "42"]
    clean = {k: v for k, v in process_env.items() if k not in ("STRIPE_WEBHOOK_SECRET", "PORT")}
    try:
        from_env = subprocess.run(
            send,
            cwd=tmp_path,
            env={**clean, "STRIPE_WEBHOOK_SECRET": SECRET},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert from_env.returncode == 0 and '"status":"queued"' in from_env.stdout, from_env.stdout + from_env.stderr
        from_dotenv = subprocess.run(send, cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=30)
        assert from_dotenv.returncode == 1 and '"reason":"mismatch"' in from_dotenv.stdout  # .env's secret was used
        assert f"localhost:{base.rsplit(':', 1)[1]}" in from_dotenv.stdout  # and its PORT
    finally:
        proc.stop()


def test_bin_run_honours_port_while_8000_is_busy(redis_url, tmp_path):
    blocker = socket.socket()
    with contextlib.suppress(OSError):
        blocker.bind(("0.0.0.0", 8000))
        blocker.listen()
    port, metrics_port = free_port(), free_port()
    env = {
        **service_env(redis_url, f"sqlite:///{tmp_path}/run.db"),
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
    }
    run = subprocess.Popen(
        [str(REPO / "bin" / "run")],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1).status == 200,
            timeout=120,
            what="bin/run's receiver on PORT",
        )
        assert post(base, build_event("checkout.session.completed", "run-1")) == 200
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).status == 200,
            what="the consumer's metrics on METRICS_PORT",
        )
        from models.db import open_database

        db = open_database(f"sqlite:///{tmp_path}/run.db")
        wait_for(lambda: Subscription.get_or_none(Subscription.community_id == "run-1"), what="the event applied")
        db.close()
    finally:
        os.killpg(run.pid, signal.SIGTERM)
        output = run.communicate(timeout=30)[0].decode(errors="replace")
        blocker.close()
    assert "web.1" in output and "worker.1" in output


def test_the_consumer_name_is_stable_under_honcho(monkeypatch):
    for variable in ("HONCHO_PROCESS_NAME", "PS", "DYNO"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HONCHO_PROCESS_NAME", "worker.1")
    assert default_name() == f"{socket.gethostname()}-worker.1"


@pytest.mark.parametrize(
    "text,ms",
    [
        ("5m", 300_000),
        ("30s", 30_000),
        ("1500ms", 1500),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("250", 250),
        ("1.5s", 1500),
    ],
)
def test_durations_take_units(text, ms):
    assert DURATION.convert(text, None, None) == ms


@pytest.mark.parametrize("command", ["billing-receiver", "billing-consumer"])
def test_console_scripts_answer_version(command):
    script = os.path.join(os.path.dirname(sys.executable), command)
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith(f"{command}, version ")
