"""Redis topologies as local processes: one primary, two replicas and three sentinels.

`SentinelTopology(base_dir).start()` starts them on free ports, each with its own directory
(the data nodes with the project's redis.conf), and waits until every sentinel sees both
replicas and the other two sentinels, so that a failover can happen at once. Sentinels decide
fast: a primary is down after `down_after_ms` (1 s), and a failover that stalls is retried after
`failover_timeout_ms`. `url` is the `redis+sentinel://` URL slackq's processes take.

    python -m harness topology sentinel   # prints REDIS_URL; Ctrl-C stops everything
    python -m harness topology cluster    # three primaries, a replica each (harness.cluster)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from harness.netns import NetnsNetwork
from slackq.connection import PROBE, sync_redis_client
from slackq.embedded import REDIS_CONF, RedisProcess, free_port, server_binary

MASTER_NAME = "slackq"
QUORUM = 2


LOOPBACK = "127.0.0.1"


def ask(host: str, port: int, command: Callable[[redis.Redis], Any]) -> Any:
    """`command` on a client of the server at `host:port`; None when it does not answer."""
    client = sync_redis_client(f"redis://{host}:{port}/0", PROBE)
    try:
        return command(client)
    except (redis.ConnectionError, redis.TimeoutError):
        return None
    finally:
        client.close()


SYNC_DELAY = "repl-diskless-sync-delay"


@contextlib.contextmanager
def prompt_first_sync(nodes: list[NodeProcess]) -> Iterator[None]:
    """The replicas' first full sync at once; then each node's own delay again.

    Before a full sync a primary waits `repl-diskless-sync-delay` (5 s by default) for more
    replicas to share the transfer: every topology's start waited that long for its replicas to
    be in sync. The value is put back once the topology is up, so that the failovers and heals of
    a campaign sync as the configuration says.
    """
    def set_delay(node: NodeProcess, value: Any) -> None:
        ask(node.host, node.port, lambda client: client.config_set(SYNC_DELAY, value))

    saved = [(node, ask(node.host, node.port, lambda client: client.config_get(SYNC_DELAY)))
             for node in nodes]
    for node in nodes:
        set_delay(node, 0)
    try:
        yield
    finally:
        for node, reply in saved:
            if isinstance(reply, dict) and SYNC_DELAY in reply:
                set_delay(node, reply[SYNC_DELAY])


@dataclass
class NodeProcess(RedisProcess):
    """A data node on `host`, started with `prefix` (e.g. in a network namespace)."""

    host: str = LOOPBACK
    prefix: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [*self.prefix, *super().command()]

    def pause(self) -> None:
        """SIGSTOP: the node neither answers nor replicates until `resume`."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)


@dataclass
class SentinelProcess:
    """One `redis-server --sentinel` on `host`, with its own (rewritable) config file."""

    directory: Path
    primary: tuple[str, int]
    down_after_ms: int
    failover_timeout_ms: int
    port: int = field(default_factory=free_port)
    binary: str = field(default_factory=server_binary)
    host: str = LOOPBACK
    prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        host, port = self.primary
        return "\n".join([
            f"port {self.port}", f"bind {self.host}", "protected-mode no", "daemonize no",
            f"dir {self.directory}", f"logfile {self.directory / 'sentinel.log'}",
            f"sentinel monitor {MASTER_NAME} {host} {port} {QUORUM}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 2", "",
        ])

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen(
            [*self.prefix, self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def master(self) -> dict[str, Any]:
        """What this sentinel knows of the primary (`SENTINEL MASTER`), {} when it is down."""
        reply = ask(self.host, self.port, lambda client: client.sentinel_master(MASTER_NAME))
        return reply if isinstance(reply, dict) else {}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class SentinelTopology:
    """A primary, `replicas` replicas and `sentinels` sentinels, all local processes."""

    base_dir: Path
    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1_000
    failover_timeout_ms: int = 3_000
    overrides: dict[str, str] = field(default_factory=dict)  # for every data node
    binary: str | None = None  # redis-server on PATH unless given (valkey-server runs too)
    # Each process in a network namespace of its own (harness.netns), so that a campaign can
    # partition the primary; as root, on Linux.
    partitionable: bool = False
    nodes: list[NodeProcess] = field(default_factory=list)
    watchers: list[SentinelProcess] = field(default_factory=list)
    network: NetnsNetwork | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"{watcher.host}:{watcher.port}" for watcher in self.watchers)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self, timeout: float = 30.0) -> SentinelTopology:
        """Start everything; return once the sentinels are ready to fail over."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _place(self, index: int) -> dict[str, Any]:
        """Where process `index` (data nodes first, then sentinels) runs: host and prefix."""
        if self.network is None:
            return {"host": LOOPBACK, "prefix": []}
        return {"host": self.network.address(index), "prefix": self.network.prefix(index)}

    def _start(self, timeout: float) -> None:
        if self.partitionable:
            self.network = NetnsNetwork(1 + self.replicas + self.sentinels).setup()
        for index in range(1 + self.replicas):
            data_dir = self.base_dir / f"redis-{index}"
            data_dir.mkdir(parents=True, exist_ok=True)
            # A copy each: Sentinel sends CONFIG REWRITE to every node it reconfigures.
            config = data_dir / "redis.conf"
            shutil.copyfile(REDIS_CONF, config)
            place = self._place(index)
            overrides = {**self.overrides, "bind": place["host"]}
            if self.network is not None:  # its clients and peers come from other addresses
                overrides["protected-mode"] = "no"
            node = NodeProcess(data_dir=data_dir, config_file=config,
                               binary=server_binary(self.binary), overrides=overrides, **place)
            node.start()
            self.nodes.append(node)
        with prompt_first_sync(self.nodes):
            primary = (self.nodes[0].host, self.nodes[0].port)
            for node in self.nodes[1:]:
                ask(node.host, node.port, lambda client: client.replicaof(*primary))
            for index in range(self.sentinels):
                watcher = SentinelProcess(self.base_dir / f"sentinel-{index}", primary,
                                          self.down_after_ms, self.failover_timeout_ms,
                                          binary=server_binary(self.binary),
                                          **self._place(len(self.nodes) + index))
                watcher.start()
                self.watchers.append(watcher)
            self._wait(self._ready, timeout, "the sentinels to see every replica and each other")

    def _ready(self) -> bool:
        for watcher in self.watchers:
            state = watcher.master()
            if (int(state.get("num-slaves", 0)) < self.replicas
                    or int(state.get("num-other-sentinels", 0)) < self.sentinels - 1):
                return False
        return all(self.replica_in_sync(node) for node in self.nodes[1:])

    @staticmethod
    def replica_in_sync(node: NodeProcess) -> bool:
        reply = ask(node.host, node.port, lambda client: client.info("replication"))
        return isinstance(reply, dict) and reply.get("master_link_status") == "up"

    def primary_port(self) -> int | None:
        """The primary's port as the sentinels' majority reports it (None: no answer)."""
        votes: dict[int, int] = {}
        for watcher in self.watchers:
            reply = ask(watcher.host, watcher.port,
                         lambda client: client.sentinel_get_master_addr_by_name(MASTER_NAME))
            if isinstance(reply, (list, tuple)) and len(reply) == 2:
                votes[int(reply[1])] = votes.get(int(reply[1]), 0) + 1
        best = max(votes.items(), key=lambda item: item[1], default=None)
        return best[0] if best and best[1] >= QUORUM else None

    def node(self, port: int) -> NodeProcess:
        return next(node for node in self.nodes if node.port == port)

    def partition_primary(self) -> NodeProcess:
        """Cut the current primary off from the replicas and the sentinels (clients still reach
        it); return it. Needs `partitionable`."""
        port = self.primary_port()
        if self.network is None or port is None:
            raise RuntimeError("no partitionable topology with a primary")
        primary = self.node(port)
        index = self.nodes.index(primary)
        others = [i for i in range(len(self.nodes) + len(self.watchers)) if i != index]
        self.network.isolate(index, others)
        return primary

    def heal(self) -> None:
        """Undo `partition_primary`."""
        if self.network is not None:
            self.network.heal()

    def kill_primary(self) -> NodeProcess:
        """SIGKILL the current primary; return it (its `port` is the old primary's)."""
        port = self.primary_port()
        if port is None:
            raise RuntimeError("the sentinels name no primary")
        primary = self.node(port)
        primary.kill()
        return primary

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until the sentinels name a new primary that answers as one; return its port."""
        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old_port:
                return False
            node = self.node(port)
            reply = ask(node.host, node.port, lambda client: client.role())
            return isinstance(reply, list) and reply[:1] == ["master"]

        self._wait(promoted, timeout, f"a primary other than :{old_port}")
        port = self.primary_port()
        assert port is not None
        return port

    def stop(self) -> None:
        for watcher in self.watchers:
            watcher.kill()
        for node in self.nodes:
            node.kill()
        if self.network is not None:
            self.network.teardown()

    @staticmethod
    def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if condition():
                    return
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout}s for {what}")


def serve(argv: list[str]) -> int:
    """`python -m harness topology sentinel|cluster [--dir DIR] [--server redis|valkey|PATH]
    [--replicas N]`: start the topology, print its URL and ports, run until SIGINT/SIGTERM."""
    from harness.cluster import ClusterTopology  # it builds on this module

    parser = argparse.ArgumentParser(prog="python -m harness topology")
    parser.add_argument("kind", choices=("sentinel", "cluster"))
    parser.add_argument("--dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--server", default=None, help="redis (default), valkey or a path")
    parser.add_argument("--replicas", type=int, default=None,
                        help="replicas (sentinel: 2) or replicas per primary (cluster: 1)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with tempfile.TemporaryDirectory() as work:
        base = args.dir or Path(work)
        topology: SentinelTopology | ClusterTopology
        if args.kind == "cluster":
            replicas = 1 if args.replicas is None else args.replicas
            topology = ClusterTopology(base, replicas=replicas, binary=args.server).start()
            described = f"{len(topology.nodes)} nodes: {topology.primaries} primaries"
        else:
            replicas = 2 if args.replicas is None else args.replicas
            topology = SentinelTopology(base, replicas=replicas, binary=args.server).start()
            described = (" ".join(str(node.port) for node in topology.nodes)
                         + f" (primary {topology.primary_port()})")
        try:
            print(f"REDIS_URL={topology.url}")
            print(f"data nodes: {described}; Ctrl-C stops everything", flush=True)
            stop.wait()
        finally:
            topology.stop()
    return 0
