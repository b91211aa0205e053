"""Real services for the tests and the benchmarks: redis-server, PostgreSQL and our own processes. Not shipped."""

from harness.processes import REPO, SECRET, Process, default_sigint, service_env, start_receiver
from harness.redis_topologies import RedisCluster, RedisReplicated, RedisSentinel
from harness.services import (
    PostgresServer,
    RedisServer,
    free_port,
    postgres_reachable,
    postgres_schema,
    wait_for,
)

__all__ = [
    "REPO",
    "SECRET",
    "PostgresServer",
    "Process",
    "RedisCluster",
    "RedisReplicated",
    "RedisSentinel",
    "RedisServer",
    "default_sigint",
    "free_port",
    "postgres_reachable",
    "postgres_schema",
    "service_env",
    "start_receiver",
    "wait_for",
]
