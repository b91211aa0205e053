"""Receiver throughput under load, on demand: `.venv/bin/python bench/receiver_load.py [--seconds 10 --rounds 3]`.

Same run, same gunicorn settings as `receiver serve` (worker count, class and threads), four servers
(bench/apps.py): the bare Flask app, the bare app plus one Redis PING (the floor for any receiver that waits
for Redis before it answers), the naive receiver a user would write, and ours. wrk (Debian's `wrk`) keeps
32 connections busy from 2 threads, every request a distinct Stripe event (3.5-5.5 KB) signed the way Stripe
signs. Prints, per server: requests/s, p99 latency and CPU per request (the server's process tree plus
redis-server, from /proc), each as a ratio to the bare app measured in the same run; the best of the rounds."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.servers import serve_app  # noqa: E402
from harness import REPO, SECRET, Process, RedisServer, free_port, service_env, wait_for  # noqa: E402
from receiver.sample_events import EVENT_TYPES, build_event  # noqa: E402
from receiver.serve import DEFAULT_THREADS, DEFAULT_WORKERS  # noqa: E402
from receiver.signing import signature_header  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live children (gunicorn's workers), in seconds."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def request_files(tmp: str, count: int, threads: int) -> dict[str, str]:
    """`count` distinct signed events split over one file per wrk thread."""
    env, handles = {}, []
    for n in range(threads):
        path = os.path.join(tmp, f"requests-{n + 1}.tsv")
        env[f"BENCH_REQUESTS_{n + 1}"] = path
        handles.append(open(path, "w"))
    for n in range(count):
        event = build_event(EVENT_TYPES[n % len(EVENT_TYPES)], f"load-{n % 2000}", amount=100 + n)
        # 3.5-5.5 KB, pretty-printed as Stripe's are, on one line for the file (JSON escapes newlines in strings)
        body = json.dumps(event, indent=1 + n % 2).replace("\n", " ").encode()
        handles[n % threads].write(f"{signature_header(body, SECRET)}\t{body.decode()}\n")
    for handle in handles:
        handle.close()
    return env


def start(kind: str, env: dict, tmp: str, gunicorn_args: str = "") -> tuple[Process, str]:
    if kind != "ours":
        return serve_app(kind, env, tmp, gunicorn_args)
    port = free_port()
    args = ["receiver", "serve", "--bind", f"127.0.0.1:{port}", *os.environ.get("BENCH_SERVE_ARGS", "").split()]
    proc = Process(args, {**env, "GUNICORN_CMD_ARGS": gunicorn_args}, tmp)
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: urllib.request.urlopen(f"{base}/healthz", timeout=1), what=f"our receiver: {proc.output()[-1500:]}"
    )
    return proc, base


def wrk(base: str, seconds: int, connections: int, threads: int, files: dict) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "-s",
            os.path.join(HERE, "wrk_post.lua"),
            f"{base}/webhooks/stripe",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **files},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p99_ms": float(p99.group(1)) * scale,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--servers", default="bare,bare_ping,naive,ours")
    parser.add_argument("--gunicorn", default="", help="gunicorn options for all three servers, e.g. '--threads 4'")
    parser.add_argument(
        "--appendfsync",
        default="always",
        choices=["always", "everysec", "no-aof"],
        help="the Redis's persistence: always (bin/run's, the default), everysec, or none",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    tmp = tempfile.mkdtemp(prefix="bench-receiver-load-")
    redis = RedisServer(appendonly=args.appendfsync != "no-aof")
    redis.fsync = "everysec" if args.appendfsync == "everysec" else "always"
    redis.start()
    env = service_env(redis.url, f"sqlite:///{tmp}/billing.db", PYTHONPATH=REPO.as_posix())
    kinds = args.servers.split(",")
    best: dict[str, dict] = {}
    try:
        for round_no in range(args.rounds):
            for kind in kinds:
                redis.client().flushall()
                files = request_files(tmp, 4000 * args.seconds, 2)  # more than any server answers in the time
                proc, base = start(kind, env, tmp, args.gunicorn)
                try:
                    before = cpu_seconds(proc.popen.pid), cpu_seconds(redis.process.pid)
                    figures = wrk(base, args.seconds, args.connections, 2, files)
                    server_cpu = cpu_seconds(proc.popen.pid) - before[0]
                    redis_cpu = cpu_seconds(redis.process.pid) - before[1]
                    used = server_cpu + redis_cpu
                finally:
                    proc.stop()
                figures["cpu_ms"] = used * 1000 / max(1, figures["requests"])
                redis_ms = redis_cpu * 1000 / max(1, figures["requests"])
                print(
                    f"round {round_no + 1} {kind:9} {figures['rps']:8.0f} req/s  p99 {figures['p99_ms']:7.1f} ms  "
                    f"{figures['cpu_ms']:.2f} ms CPU/request (redis-server {redis_ms:.2f})  "
                    f"non-2xx {figures['non_2xx']}",
                    flush=True,
                )
                if kind not in best or figures["rps"] > best[kind]["rps"]:
                    best[kind] = figures
    finally:
        redis.close()
        shutil.rmtree(tmp, ignore_errors=True)
    bare = best.get("bare")
    print(
        f"\nbest of {args.rounds} rounds of {args.seconds} s, {args.connections} connections, gunicorn "
        f"{DEFAULT_WORKERS} workers x {DEFAULT_THREADS} threads (gthread), Redis appendfsync always"
    )
    print(f"{'server':9} {'req/s':>8} {'x bare':>7} {'p99 ms':>8} {'x bare':>7} {'CPU ms/req':>11} {'x bare':>7}")
    for kind, f in best.items():
        ratio = (lambda key: f[key] / bare[key]) if bare else (lambda key: float("nan"))
        print(
            f"{kind:9} {f['rps']:8.0f} {ratio('rps'):7.2f} {f['p99_ms']:8.1f} {ratio('p99_ms'):7.2f} "
            f"{f['cpu_ms']:11.2f} {ratio('cpu_ms'):7.2f}"
        )


if __name__ == "__main__":
    main()
