"""Fixtures: a real redis-server per test on a free port, and the Slack Web API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from bullmq import Queue

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.prerequisites import enforce
from tests.scheduling import LONG_MARKS, ModuleScheduling, module_group, unit_seconds
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET
from tests.webhook_client import module_redis, queue_redis, webhook_settings  # noqa: F401 - fixtures
from tests.worker_helpers import make_queue


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ModuleScheduling | None:
    """Under `--dist loadgroup` (what `python3 dev.py test` runs): one module group per unit of
    work (tests/scheduling.py), instead of xdist's marks, which pytest >= 9.2 drops."""
    if config.getvalue("dist") != "loadgroup":
        return None
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker under `loadgroup`: the longest module groups first (the scheduler
    hands units out in collection order, `--no-loadscope-reorder`); modules stay whole."""
    if not getattr(config.option, "loadgroup", False):
        return
    marked = {item.path.stem: False for item in items}
    for item in items:
        if any(item.get_closest_marker(mark) for mark in LONG_MARKS):
            marked[item.path.stem] = True
    seconds = unit_seconds(marked)
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        first.setdefault(module_group(item.nodeid), index)
    items.sort(key=lambda item: (-seconds[module_group(item.nodeid)],
                                 first[module_group(item.nodeid)]))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, or under CI=true fail, a test whose prerequisite is missing (prerequisites.py)."""
    enforce(item)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh `redis-server` with the project's redis.conf, its own port and data directory."""
    server = RedisProcess(data_dir=tmp_path / "redis")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(redis_server: RedisProcess, fake_slack: FakeSlack) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        slack_signing_secret=SIGNING_SECRET,
        slack_bot_token=BOT_TOKEN,
        slack_api_url=fake_slack.base_url,
        log_format="console",
    )


@pytest.fixture
async def aclient(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of the test's Redis (tests that need another override it)."""
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[Queue]:
    """The worker's queue on the test's Redis, as a producer would reach it."""
    queue = make_queue(settings)
    yield queue
    await queue.close()
