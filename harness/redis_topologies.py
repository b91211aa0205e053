"""Real Redis topologies for the tests and the benchmarks: a primary with a replica, a Redis Cluster (three primaries,
three replicas) and Redis Sentinel (a primary, a replica, three Sentinels), each of redis-server processes on free
ports that a test may kill, pause or fail over. Every wait is a wait_for on what the servers say, never a sleep."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile

import redis
from redis.crc import key_slot

from harness.services import RedisServer, free_port, wait_for


def _info(client: redis.Redis, section: str) -> dict:
    return client.info(section)


class RedisReplicated:
    """A primary and `replicas` replicas of it (`--replicaof`), started and in sync."""

    def __init__(self, replicas: int = 1):
        self.primary = RedisServer(appendonly=True)
        self.replicas = [RedisServer(appendonly=True) for _ in range(replicas)]

    @property
    def url(self) -> str:
        return self.primary.url

    def start(self) -> "RedisReplicated":
        self.primary.start()
        for replica in self.replicas:
            replica.extra_args = ("--replicaof", "127.0.0.1", str(self.primary.port))
            replica.start()
        self.wait_in_sync(len(self.replicas))
        return self

    def wait_in_sync(self, count: int) -> None:
        """Until `count` replicas are connected to the primary and online."""
        wait_for(
            lambda: (
                _info(self.primary.client(), "replication")["connected_slaves"] == count
                and all(
                    _info(replica.client(), "replication")["master_link_status"] == "up"
                    for replica in self.replicas[:count]
                )
            ),
            what=f"{count} replica(s) of {self.primary.port} in sync",
        )

    def close(self) -> None:
        for server in [*self.replicas, self.primary]:
            server.resume()
            server.close()


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a port, and free too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


CLUSTER_NODE_TIMEOUT_MS = 1000  # how soon a dead primary is failed over (the default, 15 s, is long for a test)


class RedisCluster:
    """Six redis-server processes in cluster mode (appendonly, each in its own directory): three primaries, each
    with one replica, made by `redis-cli --cluster create`."""

    def __init__(self, size: int = 6):
        if shutil.which("redis-cli") is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        self.nodes = [
            RedisServer(
                appendonly=True,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(CLUSTER_NODE_TIMEOUT_MS),
                    "--cluster-replica-validity-factor",  # a replica may always take over, however idle its link
                    "0",
                ),
            )
            for _ in range(size)
        ]
        for node in self.nodes:
            node.port = _cluster_port()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process and node.process.poll() is None]

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says `cluster_state:ok` and they agree on who serves every slot."""

        def ok() -> bool:
            views = []
            for node in self.live():
                client = node.client()
                if client.execute_command("CLUSTER INFO")["cluster_state"] != "ok":
                    return False
                views.append(sorted((start, end, primary) for start, end, primary in self._slots(client)))
            return all(view == views[0] for view in views)

        wait_for(ok, timeout=timeout, interval=0.05, what="cluster_state:ok on every node")

    @staticmethod
    def _slots(client: redis.Redis) -> list[tuple[int, int, int]]:
        """(first slot, last slot, primary's port) of each range, from CLUSTER SLOTS."""
        return [(int(r[0]), int(r[1]), int(r[2][1])) for r in client.execute_command("CLUSTER SLOTS")]

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def primary_of_slot(self, slot: int) -> RedisServer:
        for start, end, port in self._slots(self.live()[0].client()):
            if start <= slot <= end:
                return self.node(port)
        raise LookupError(f"no node serves slot {slot}")

    def primary_of_key(self, key: str | bytes) -> RedisServer:
        return self.primary_of_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """A live replica of `primary`, as the primary lists them."""
        replication = _info(primary.client(), "replication")
        ports = [int(value["port"]) for name, value in replication.items() if name.startswith("slave")]
        return next(node for node in self.live() if node.port in ports)

    def failover(self, replica: RedisServer) -> None:
        """`CLUSTER FAILOVER` on a replica (its primary alive: no write lost); waits until it is the primary."""
        replica.client().execute_command("CLUSTER FAILOVER")
        wait_for(lambda: replica.client().execute_command("ROLE")[0] == b"master", what=f"{replica.port} primary")
        self.wait_ok()

    def kill(self, node: RedisServer) -> None:
        """SIGKILL one node; when it was a primary, waits until its replica has taken its slots over."""
        slots = [(start, end) for start, end, port in self._slots(self.live()[0].client()) if port == node.port]
        node.kill()
        if slots:
            wait_for(
                lambda: all(self.primary_of_slot(start).port != node.port for start, _ in slots),
                timeout=30,
                what=f"a new primary for the slots of {node.port}",
            )
        self.wait_ok()

    def close(self) -> None:
        for node in self.nodes:
            node.resume()
            node.close()


class RedisSentinel:
    """Redis Sentinel: a primary, a replica of it and three Sentinels monitoring it as `service`."""

    def __init__(self, service: str = "billing"):
        self.service = service
        self.replicated = RedisReplicated(replicas=1)
        self.dir = tempfile.mkdtemp(prefix="billing-sentinel-")
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def primary(self) -> RedisServer:
        return self.replicated.primary

    @property
    def replica(self) -> RedisServer:
        return self.replicated.replicas[0]

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{self.service}"

    def start(self) -> "RedisSentinel":
        self.replicated.start()
        for port in self.sentinel_ports:
            config = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(config, "w") as file:
                file.write(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir}/sentinel-{port}.log\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} 1000\n"
                    f"sentinel failover-timeout {self.service} 5000\n"
                )
            self.sentinels.append(
                subprocess.Popen(
                    ["redis-server", config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port in self.sentinel_ports:  # each knows the primary, the replica and the two other Sentinels
            wait_for(
                lambda port=port: (
                    (state := self._master_state(port))
                    and int(state["num-slaves"]) == 1
                    and int(state["num-other-sentinels"]) == 2
                ),
                timeout=30,
                what=f"sentinel {port} sees the replica and the other sentinels",
            )
        return self

    def _master_state(self, port: int) -> dict:
        reply = redis.Redis(port=port, socket_timeout=2).execute_command("SENTINEL", "MASTER", self.service)
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2])  # as redis-py parses it
        return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v for k, v in pairs}

    def primary_port(self, sentinel_port: int) -> int:
        host_port = redis.Redis(port=sentinel_port, socket_timeout=2).execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        )
        return int(host_port[1])

    def kill_primary(self) -> RedisServer:
        """SIGKILL the primary and wait until every Sentinel names the replica, and it is a primary; returns it."""
        old, new = self.primary, self.replica
        old.kill()
        wait_for(
            lambda: (
                all(self.primary_port(port) == new.port for port in self.sentinel_ports)
                and new.client().execute_command("ROLE")[0] == b"master"
            ),
            timeout=60,
            interval=0.1,
            what=f"the sentinels to promote {new.port}",
        )
        self.replicated.primary, self.replicated.replicas = new, [old]
        return new

    def close(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.poll() is None:
                sentinel.kill()
                sentinel.wait()
        self.replicated.close()
        shutil.rmtree(self.dir, ignore_errors=True)
