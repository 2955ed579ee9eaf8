"""ruff and strict mypy run in CI as part of the test command (conventions, habit 9)."""

from __future__ import annotations

import subprocess
import sys

from slackq.embedded import PROJECT_ROOT


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing() -> None:
    result = run_tool("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing() -> None:
    result = run_tool("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
