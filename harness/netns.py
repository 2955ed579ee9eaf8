"""A private network for a topology, so that a campaign can partition it (Linux, as root).

Each server gets its own network namespace, joined to a bridge in this (the clients') namespace
by a veth pair, with its own address `10.78.<net>.<10+i>`; the bridge has `10.78.<net>.1`.
Clients reach every server through the bridge. `isolate(i, peers)` adds blackhole routes in the
namespaces of server `i` and of its peers, for each other's addresses: packets between them
vanish (as in a real partition: open connections hang, new ones time out), while the clients
still reach server `i`. `heal()` removes them.

Blackhole routes, not firewall rules: this machine has neither iptables nor tc actions, and the
routes stay inside the servers' own namespaces. Only the bridge and the host ends of the veth
pairs live in the clients' namespace; `teardown()` deletes them and the namespaces.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field


def unavailable_reason() -> str | None:
    """None when namespaces can be made here, else why not."""
    if not os.path.exists("/proc/self/ns/net"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"sqprobe{secrets.token_hex(2)}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "`ip netns add` is not permitted here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class NetnsNetwork:
    """`size` servers, one namespace each, on one bridge."""

    size: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    net: int = field(default_factory=lambda: 100 + secrets.randbelow(150))
    blackholes: list[tuple[int, str]] = field(default_factory=list)  # (server, address)

    @property
    def bridge(self) -> str:
        return f"sqb{self.tag}"

    def namespace(self, index: int) -> str:
        return f"slackq-{self.tag}-{index}"

    def address(self, index: int) -> str:
        return f"10.78.{self.net}.{10 + index}"

    def prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program in server `index`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(index)]

    def setup(self) -> NetnsNetwork:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"10.78.{self.net}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index in range(self.size):
                self._join(index)
        except BaseException:
            self.teardown()
            raise
        return self

    def _join(self, index: int) -> None:
        namespace, host_end, inner = self.namespace(index), f"sq{self.tag}h{index}", "eth0"
        _ip("netns", "add", namespace)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", f"sq{self.tag}n{index}")
        _ip("link", "set", f"sq{self.tag}n{index}", "netns", namespace)
        _ip("link", "set", host_end, "master", self.bridge)
        _ip("link", "set", host_end, "up")
        inside = ["netns", "exec", namespace, "ip"]
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "link", "set", f"sq{self.tag}n{index}", "name", inner)
        _ip(*inside, "addr", "add", f"{self.address(index)}/24", "dev", inner)
        _ip(*inside, "link", "set", inner, "up")

    def isolate(self, index: int, peers: list[int]) -> None:
        """Cut server `index` off from `peers` (both ways); clients still reach all of them."""
        for peer in peers:
            for here, there in ((index, peer), (peer, index)):
                _ip("netns", "exec", self.namespace(here), "ip", "route", "add", "blackhole",
                    f"{self.address(there)}/32")
                self.blackholes.append((here, self.address(there)))

    def heal(self) -> None:
        while self.blackholes:
            here, address = self.blackholes.pop()
            _ip("netns", "exec", self.namespace(here), "ip", "route", "del", "blackhole",
                f"{address}/32")

    def teardown(self) -> None:
        """Delete the namespaces (their veth ends go with them) and the bridge; never raises."""
        for index in range(self.size):
            subprocess.run(["ip", "netns", "del", self.namespace(index)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
