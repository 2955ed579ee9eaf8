"""What a test needs from the machine (Node, FUSE, ...), and what happens when it is missing.

On a developer's machine a missing prerequisite skips the test, with the reason. Under `CI=true`
it fails the test instead: CI is set up to run everything (`python3 dev.py test` runs `npm ci`,
the image has libfuse3 and /dev/fuse), so a prerequisite missing there is a broken CI, and a skip
would pass it unseen. The one exception is Docker (`docker_unavailable_reason`), which CI
runners may not offer: those tests keep a plain `skipif`.

    needs_node = requires("Node interop", node_skip_reason())

    @needs_node
    def test_...(): ...

`tests/conftest.py` applies the decision before each marked test runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

import pytest

MARK = "prerequisite"
Decision = Literal["run", "skip", "fail"]


def under_ci(env: Mapping[str, str] | None = None) -> bool:
    """Whether `env` (the environment by default) says this is CI: `CI` set to true/1/yes."""
    env = os.environ if env is None else env
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def decide(reason: str | None, env: Mapping[str, str] | None = None) -> Decision:
    """Run when nothing is missing; else skip, or fail under CI."""
    if reason is None:
        return "run"
    return "fail" if under_ci(env) else "skip"


def requires(what: str, reason: str | None) -> pytest.MarkDecorator:
    """A mark for tests that need `what`; `reason` says why it is missing here (None: it is not).
    """
    return getattr(pytest.mark, MARK)(what=what, reason=reason)


def enforce(item: pytest.Item) -> None:
    """Skip or fail `item` if a prerequisite it is marked with is missing (conftest calls this)."""
    for mark in item.iter_markers(MARK):
        what, reason = mark.kwargs["what"], mark.kwargs["reason"]
        decision = decide(reason)
        if decision == "fail":
            pytest.fail(f"{what} cannot run under CI=true, where nothing may skip: {reason}",
                        pytrace=False)
        if decision == "skip":
            pytest.skip(f"{what}: {reason}")
