"""Start the Procfile's processes as real subprocesses, exactly as a dyno would run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from slackq.embedded import PROJECT_ROOT


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
    # One worker process per `worker` dyno unless a test asks for more (tests/test_supervisor.py):
    # the default (the CPU count) would make connection counts depend on the machine.
    env["WORKER_PROCESSES"] = "1"
    env.update(overrides)
    return env


class Proc:
    """A process whose output goes to a log file the test can read.

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

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.popen.poll() is not None:
                code = self.popen.returncode
                raise AssertionError(f"{self.name} exited {code}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not log {text!r} in {timeout}s:\n{self.output()}")


def wait_http_ok(url: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
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
