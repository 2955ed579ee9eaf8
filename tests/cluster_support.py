"""A local Redis Cluster for the tests (harness.cluster), and what they check on it: that every
key slackq wrote sits in its prefix's slot, and that no node ever answered CROSSSLOT."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cluster import ClusterTopology, key_slot
from harness.topology import ask


def cluster_unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None: it can; CI has redis-server and redis-cli)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server / redis-cli not on PATH (Debian's redis-server package has both)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    """Three primaries without replicas, once per module (~3 s to start)."""
    topology = ClusterTopology(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield topology
    topology.stop()


def keys_outside_slot(keys: list[str], prefix: str) -> list[str]:
    """The keys among `keys` that do not hash to `prefix`'s slot."""
    slot = key_slot(prefix)
    return [key for key in keys if key_slot(key) != slot]


def crossslot_errors(topology: ClusterTopology) -> dict[int, str]:
    """Port -> the `errorstat_CROSSSLOT` line of every live node that ever answered CROSSSLOT
    (INFO errorstats, Redis 6.2+: it counts each error reply by its code)."""
    found = {}
    for node in topology.alive():
        stats = ask(node.host, node.port, lambda client: client.info("errorstats"))
        assert isinstance(stats, dict), f"node :{node.port} did not answer INFO errorstats"
        if "errorstat_CROSSSLOT" in stats:
            found[node.port] = str(stats["errorstat_CROSSSLOT"])
    return found


def reset_error_stats(topology: ClusterTopology) -> None:
    """Zero every live node's error counters (CONFIG RESETSTAT), so that a check sees only the
    errors of what follows."""
    for node in topology.alive():
        ask(node.host, node.port, lambda client: client.config_resetstat())
