"""A Redis Cluster as local processes: three primaries, each with `replicas` replicas.

`ClusterTopology(base_dir).start()` starts `redis-server --cluster-enabled yes` nodes on free
ports (each in its own directory, with the project's redis.conf), joins them with
`redis-cli --cluster create … --cluster-replicas N --cluster-yes`, and waits until every node
reports `cluster_state:ok` and the same slot map. Nodes decide fast: a primary is failed after
`node_timeout_ms` (1 s) and a replica takes its slots over. `url` is the `redis+cluster://` URL
slackq's processes take.

    python -m harness topology cluster [--replicas 0|1]   # prints REDIS_URL; Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from harness.topology import NodeProcess, ask, prompt_first_sync
from slackq.embedded import free_port, server_binary

PRIMARIES = 3


def key_slot(key: str) -> int:
    """The cluster slot of `key` (CRC16 of its hash tag, or of the whole key), as Redis
    computes it."""
    from redis.crc import key_slot as crc_slot  # redis-py's own implementation

    return int(crc_slot(key.encode()))


@dataclass
class ClusterTopology:
    """`primaries` primaries with `replicas` replicas each, all local processes."""

    base_dir: Path
    replicas: int = 0
    primaries: int = PRIMARIES
    node_timeout_ms: int = 1_000
    binary: str | None = None  # redis-server on PATH unless given
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes[:self.primaries])
        return f"redis+cluster://{hosts}"

    def start(self, timeout: float = 60.0) -> ClusterTopology:
        """Start and join every node; return once the cluster serves every slot."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        binary = server_binary(self.binary)
        for index in range(self.primaries * (1 + self.replicas)):
            data_dir = self.base_dir / f"node-{index}"
            node = NodeProcess(data_dir=data_dir, binary=binary, overrides={
                "cluster-enabled": "yes",
                "cluster-config-file": str(data_dir / "nodes.conf"),
                "cluster-node-timeout": str(self.node_timeout_ms),
                # Its own free port for the cluster bus (the default, port + 10000, may be taken
                # or beyond 65535).
                "cluster-port": str(free_port()),
                # A replica's data is never too old to take over: the campaign kills at once.
                "cluster-replica-validity-factor": "0",
            })
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli") or str(Path(binary).with_name("redis-cli"))
        with prompt_first_sync(self.nodes):
            subprocess.run(
                [cli, "--cluster", "create", *(f"{n.host}:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, capture_output=True, timeout=timeout)
            self._wait(self._ready, timeout, "every node to report cluster_state:ok")

    def _ready(self) -> bool:
        maps = [self.slot_map(node) for node in self.alive()]
        return (all(self.cluster_ok(node) for node in self.alive())
                and all(m and m == maps[0] for m in maps)
                and all(self.replica_in_sync(node) for node in self.replica_nodes()))

    @staticmethod
    def cluster_ok(node: NodeProcess) -> bool:
        reply = ask(node.host, node.port, lambda c: c.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "INFO"))
        text = reply if isinstance(reply, str) else ""
        return "cluster_state:ok" in text

    def alive(self) -> list[NodeProcess]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    @staticmethod
    def slot_map(node: NodeProcess) -> dict[tuple[int, int], int]:
        """(first, last) slot -> the port of the primary serving them, as `node` sees it."""
        reply = ask(node.host, node.port, lambda c: c.execute_command(  # type: ignore[no-untyped-call]
            "CLUSTER", "SLOTS"))
        if not isinstance(reply, list):
            return {}
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in reply}

    def replica_nodes(self) -> list[NodeProcess]:
        return [n for n in self.alive()
                if (ask(n.host, n.port, lambda c: c.role()) or [""])[0] == "slave"]

    @staticmethod
    def replica_in_sync(node: NodeProcess) -> bool:
        reply = ask(node.host, node.port, lambda client: client.info("replication"))
        return isinstance(reply, dict) and reply.get("master_link_status") == "up"

    def owner_port(self, key: str) -> int | None:
        """The port of the primary serving `key`'s slot, as the live nodes' majority says."""
        slot = key_slot(key)
        votes: dict[int, int] = {}
        for node in self.alive():
            for (first, last), port in self.slot_map(node).items():
                if first <= slot <= last:
                    votes[port] = votes.get(port, 0) + 1
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best else None

    def replicas_of(self, port: int) -> list[NodeProcess]:
        """The live replicas of the primary on `port` (ROLE: slave, its primary's port)."""
        found = []
        for node in self.alive():
            role = ask(node.host, node.port, lambda client: client.role())
            if isinstance(role, list) and role[:1] == ["slave"] and int(role[2]) == port:
                found.append(node)
        return found

    def node(self, port: int) -> NodeProcess:
        return next(node for node in self.nodes if node.port == port)

    def kill_owner(self, key: str) -> NodeProcess:
        """SIGKILL the primary serving `key`'s slot; return it."""
        port = self.owner_port(key)
        if port is None:
            raise RuntimeError(f"no node serves the slot of {key!r}")
        owner = self.node(port)
        owner.kill()
        return owner

    def wait_failover(self, key: str, old_port: int, timeout: float = 30.0) -> int:
        """Wait until another node serves `key`'s slot as a primary and the cluster is ok."""
        def promoted() -> bool:
            port = self.owner_port(key)
            if port is None or port == old_port:
                return False
            node = self.node(port)
            role = ask(node.host, node.port, lambda client: client.role())
            return isinstance(role, list) and role[:1] == ["master"] and self.cluster_ok(node)

        self._wait(promoted, timeout, f"a primary other than :{old_port} for {key!r}")
        port = self.owner_port(key)
        assert port is not None
        return port

    def keys_everywhere(self) -> list[str]:
        """Every key on every live primary (SCAN): for checking where slackq wrote."""
        found: list[str] = []
        for node in self.alive():
            role = ask(node.host, node.port, lambda client: client.role())
            if isinstance(role, list) and role[:1] == ["master"]:
                keys = ask(node.host, node.port, lambda client: list(client.scan_iter(count=1000)))
                found.extend(str(key) for key in keys or [])
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    def _wait(self, condition: Callable[[], Any], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if condition():
                    return
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout}s for {what}")


