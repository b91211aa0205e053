"""Driving a real redis-server to its maxmemory, as a full Redis in production."""

from __future__ import annotations

import redis


def fill_until_refused(client: redis.Redis, headroom: int = 2 * 1024 * 1024) -> int:
    """Give Redis a maxmemory just above what it uses now, with noeviction (the README's advice), and write
    padding until Redis refuses writes; how many padding keys it took. Then maxmemory is pinned a little under
    what Redis uses, so that a byte freed here or there (a client's buffers) never lets a small write through."""
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used_memory(client) + headroom)
    for n in range(100_000):
        try:
            client.set(f"padding:{n}", b"x" * 32 * 1024)
        except redis.OutOfMemoryError:
            client.config_set("maxmemory", used_memory(client) - 256 * 1024)
            return n
    raise AssertionError("Redis never refused a write")


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])
