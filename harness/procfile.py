"""The Procfile's processes as real subprocesses, exactly as a dyno would run them.

Shared by the end-to-end harness modes (`harness.e2e`, `harness.failover`) and the tests
(`tests/processes.py` re-exports these names): one copy of "start `web`/`worker`, log to a
file, wait until it is up, stop it with SIGTERM then SIGKILL".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from slackq.embedded import PROJECT_ROOT, free_port

# How long to wait for a process to start (or to log what it should) before calling it stuck;
# only a deadline, waits end as soon as the condition holds. Importing the web or worker is ~2 s
# of CPU: on a shared 2-core machine running the test suite on xdist workers it took over 20 s.
START_DEADLINE = 60.0


def procfile_commands(path: Path = PROJECT_ROOT / "Procfile") -> dict[str, str]:
    commands = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            commands[name.strip()] = command.strip()
    return commands


def process_env(**overrides: str) -> dict[str, str]:
    """The environment of a dyno: this interpreter's bin first on PATH, and the given variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_", "QUEUE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["LOG_FORMAT"] = "json"
    # One worker process per `worker` dyno unless the caller asks for more: the default (the CPU
    # count) would make connection counts depend on the machine.
    env["WORKER_PROCESSES"] = "1"
    env.update(overrides)
    return env


class Proc:
    """A process whose output goes to a log file the caller can read.

    By default the Procfile's line called `name`; `command` runs something else.
    """

    def __init__(self, name: str, env: dict[str, str], log_dir: Path,
                 command: list[str] | None = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            command or ["bash", "-c", f"exec {procfile_commands()[name]}"],
            cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def wait_for_output(self, text: str, timeout: float = START_DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                code = self.popen.returncode
                raise AssertionError(f"{self.name} exited {code}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not log {text!r} in {timeout}s:\n{self.output()}")


def wait_http_ok(url: str, timeout: float = START_DEADLINE,
                 proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


@dataclass(frozen=True)
class Stack:
    """The web and worker dynos of one run; `base` is the web's URL."""

    base: str
    web: Proc
    worker: Proc

    def check_alive(self) -> None:
        """Raise, with its output's tail, if either process has exited."""
        for proc in (self.web, self.worker):
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited {proc.popen.returncode} during the "
                                   f"run:\n{proc.output()[-3000:]}")


@contextlib.contextmanager
def procfile_stack(redis_url: str, slack_api_url: str, log_dir: Path, *, secret: str,
                   token: str, env: Mapping[str, str] | None = None,
                   start_timeout: float = START_DEADLINE) -> Iterator[Stack]:
    """The Procfile's `web` and `worker` on `redis_url`, calling Slack at `slack_api_url`, with
    `env` on top of the dyno environment (`process_env`).

    Waits until the web answers /health and the worker logged `worker_started`; stops both
    (SIGTERM, then SIGKILL after 30 s) on the way out.
    """
    port = free_port()
    full = process_env(REDIS_URL=redis_url, SLACK_SIGNING_SECRET=secret, SLACK_BOT_TOKEN=token,
                       SLACK_API_URL=slack_api_url, PORT=str(port), **(env or {}))
    web, worker = Proc("web", full, log_dir), Proc("worker", full, log_dir)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", start_timeout, proc=web)
        worker.wait_for_output("worker_started", start_timeout)
        yield Stack(base, web, worker)
    finally:
        worker.stop()
        web.stop()
