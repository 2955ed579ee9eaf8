"""The rule for tests that need something from the machine: skip on a laptop, fail under CI.

The decision on its own, then through a real pytest run of a small test module in a child
process, with and without `CI=true`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.prerequisites import decide, under_ci
from tests.processes import process_env


@pytest.mark.parametrize(("reason", "env", "decision"), [
    (None, {}, "run"),
    (None, {"CI": "true"}, "run"),
    ("no node", {}, "skip"),
    ("no node", {"CI": ""}, "skip"),
    ("no node", {"CI": "false"}, "skip"),
    ("no node", {"CI": "true"}, "fail"),
    ("no node", {"CI": "1"}, "fail"),
    ("no fuse", {"CI": "TRUE"}, "fail"),
])
def test_decision(reason: str | None, env: dict[str, str], decision: str) -> None:
    assert decide(reason, env) == decision
    assert under_ci(env) == (env.get("CI", "").lower() in ("true", "1"))


MODULE = '''
from tests.prerequisites import requires

@requires("the thing", "the thing is not installed")
def test_needs_the_thing():
    pass

@requires("the other thing", None)
def test_has_what_it_needs():
    pass
'''


@pytest.mark.parametrize(("ci", "outcome", "code"), [("", "1 passed, 1 skipped", 0),
                                                      ("true", "1 passed, 1 error", 1)])
def test_a_missing_prerequisite_skips_locally_and_fails_under_ci(
    tmp_path: Path, ci: str, outcome: str, code: int,
) -> None:
    module = tmp_path / "test_needs.py"
    module.write_text(MODULE)
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-c", str(root / "pyproject.toml"), "--rootdir", str(root), str(module)],
        env=process_env(CI=ci), capture_output=True, text=True, timeout=180, cwd=root)
    assert (done.returncode, outcome in done.stdout) == (code, True), done.stdout + done.stderr
    if ci:
        assert "the thing cannot run under CI=true" in done.stdout
        assert "the thing is not installed" in done.stdout
