"""One Procfile stack (web + worker, a real Redis, the Slack stand-in) for a whole test module.

Starting the web and the worker costs about a second of CPU each, several seconds of wall time
on a busy 2-core machine. Tests that only send requests through a healthy stack, and never stop,
signal or reconfigure its processes, share one: `fresh` gives each test an empty Redis (FLUSHALL,
once no job is active any more) and a Slack stand-in without calls, what a stack of its own
would start from. A module uses it by overriding the `redis_server` and `fake_slack` fixtures:
`shared, redis_server, fake_slack = stack_fixtures("e2e")` (tests/test_e2e.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.procfile import Stack, procfile_stack
from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET

QUIET_DEADLINE = 30.0  # seconds a previous test's jobs get to leave `active` before the flush


@dataclass(frozen=True)
class ModuleStack:
    redis: RedisProcess
    slack: FakeSlack
    stack: Stack

    @property
    def base(self) -> str:
        return self.stack.base


@contextmanager
def module_stack(log_dir: Path, **env: str) -> Iterator[ModuleStack]:
    """A Redis, the Slack stand-in, and the Procfile's web and worker on them, with `env`."""
    server = RedisProcess(data_dir=log_dir / "redis")
    server.start()
    slack = FakeSlack().start()
    try:
        with procfile_stack(server.url, slack.base_url, log_dir, secret=SIGNING_SECRET,
                            token=BOT_TOKEN, env=env) as stack:
            yield ModuleStack(server, slack, stack)
    finally:
        slack.stop()
        server.kill()


def fresh(shared: ModuleStack) -> ModuleStack:
    """`shared` as a new test finds it: no job in Redis, no call at Slack, both processes up."""
    shared.stack.check_alive()
    with redis.Redis.from_url(shared.redis.url) as client:
        deadline = time.monotonic() + QUIET_DEADLINE
        # A job the previous test saw answered may still be finishing (its record and
        # moveToFinished follow the Slack call): flushing under it would log errors.
        while client.llen("bull:slack-events:active"):
            assert time.monotonic() < deadline, "a job stayed active after its test"
            time.sleep(0.02)
        client.flushall()
    shared.slack.forget_calls()
    return shared


def stack_fixtures(label: str) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """The module's `shared` stack (started once, logs under a `label` directory) and the
    `redis_server` and `fake_slack` fixtures each test of the module gets from it, emptied."""

    @pytest.fixture(scope="module", name="shared")
    def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleStack]:
        with module_stack(tmp_path_factory.mktemp(label)) as started:
            yield started

    @pytest.fixture(name="redis_server")
    def redis_server(shared: ModuleStack) -> RedisProcess:
        return fresh(shared).redis

    @pytest.fixture(name="fake_slack")
    def fake_slack(redis_server: RedisProcess, shared: ModuleStack) -> FakeSlack:
        return shared.slack

    return shared, redis_server, fake_slack
