"""Readable log lines on a terminal, JSON lines everywhere else (or when LOG_FORMAT=json)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from harness.slack_standin import FakeSlack
from slackq.embedded import PROJECT_ROOT, RedisProcess, free_port
from tests.processes import process_env
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET

PROBE = """
import structlog
from slackq.logging import configure_logging
from slackq.settings import load_settings
settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
structlog.get_logger().info("format_probe", answer=42)
"""


_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


class Output:
    """A child process whose stdout and stderr are a terminal (a pty) or a pipe, read as text."""

    def __init__(self, command: list[str], env: dict[str, str], *, terminal: bool) -> None:
        self._text = b""
        if terminal:
            self._fd, child_end = pty.openpty()
            self.popen = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdin=child_end,
                                          stdout=child_end, stderr=child_end,
                                          start_new_session=True)
            os.close(child_end)
        else:
            self.popen = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, start_new_session=True)
            assert self.popen.stdout is not None
            self._fd = self.popen.stdout.fileno()

    def _read(self, timeout: float) -> bool:
        """Read what is there; False once the child's end is closed."""
        if not select.select([self._fd], [], [], timeout)[0]:
            return True
        try:
            chunk = os.read(self._fd, 65536)
        except OSError:  # EIO: every process holding the pty's other end has exited
            return False
        self._text += chunk
        return bool(chunk)

    def text(self) -> str:
        """What the child wrote, without the colours a terminal gets."""
        return _COLOURS.sub("", self._text.decode(errors="replace").replace("\r\n", "\n"))

    def _first(self, word: str) -> str | None:
        return next((line for line in self.text().splitlines() if word in line), None)

    def line_with(self, word: str, timeout: float = 30.0) -> str:
        """The first line holding `word`, waiting for it up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            open_ = self._read(0.1)
            if (line := self._first(word)) is not None:
                return line
            if not open_:
                raise AssertionError(f"output ended without {word!r}:\n{self.text()}")
        raise AssertionError(f"no {word!r} within {timeout}s:\n{self.text()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        else:
            os.close(self._fd)


def assert_console(line: str, event: str) -> None:
    assert '"event"' not in line, line
    assert "[info" in line and event in line, line


def assert_json(line: str, event: str) -> None:
    # honcho (the run command) prefixes each line with "<time> <process> | ".
    record = json.loads(line[line.index("{"):])
    assert record["event"].startswith(event) and record["level"] == "info", line


def env_without_log_format(**overrides: str) -> dict[str, str]:
    """A dyno's environment where LOG_FORMAT is only what `overrides` say."""
    env = process_env()
    del env["LOG_FORMAT"]
    return {**env, **overrides}


@pytest.mark.parametrize(("terminal", "log_format", "expected"),
                         [(True, None, "console"), (False, None, "json"),
                          (True, "json", "json"), (False, "console", "console")])
def test_the_format_follows_stderr_unless_log_format_says(
    terminal: bool, log_format: str | None, expected: str
) -> None:
    env = env_without_log_format(**({"LOG_FORMAT": log_format} if log_format else {}))
    child = Output([sys.executable, "-c", PROBE], env, terminal=terminal)
    try:
        line = child.line_with("format_probe")
        assert child.popen.wait(timeout=30) == 0, child.text()
    finally:
        child.stop()
    (assert_console if expected == "console" else assert_json)(line, "format_probe")
    assert ("answer=42" if expected == "console" else '"answer": 42') in line


@pytest.fixture
def run_env(redis_server: RedisProcess, fake_slack: FakeSlack) -> Iterator[dict[str, str]]:
    yield env_without_log_format(REDIS_URL=redis_server.url, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                                 SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_API_URL=fake_slack.base_url,
                                 PORT=str(free_port()))


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_the_run_command_logs_console_lines_in_a_terminal_and_json_otherwise(
    run_env: dict[str, str], terminal: bool
) -> None:
    """What `python3 dev.py run` starts once .venv exists: web + worker under honcho."""
    child = Output([sys.executable, "-m", "slackq.run"], run_env, terminal=terminal)
    try:
        worker_line = child.line_with("worker_started")
        web_line = child.line_with("Uvicorn running")  # uvicorn's stdlib logger, same renderer
    finally:
        child.stop()
    if terminal:
        assert_console(worker_line, "worker_started")
        assert '"event"' not in web_line
    else:
        assert_json(worker_line, "worker_started")
        assert_json(web_line, "Uvicorn running")
