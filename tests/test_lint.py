"""ruff, strict mypy and the layering contracts run in CI as part of the test command
(conventions, habits 9 and 11)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_import_contracts_hold() -> None:
    """The contracts in pyproject.toml's [tool.importlinter]: the shared core imports no app."""
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
