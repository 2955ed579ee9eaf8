"""Fixtures: a real redis-server per test on a free port, and the Slack Web API stand-in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from bullmq import Queue

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.prerequisites import enforce
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET
from tests.webhook_client import module_redis, queue_redis, webhook_settings  # noqa: F401 - fixtures
from tests.worker_helpers import make_queue

# Under `pytest -n N --dist loadgroup` (what `python3 dev.py test` runs): each test module is one
# group, run by one xdist worker, so that its module-scoped servers (a durability campaign, the
# browser's deployment) start once. Modules named here share a group: both HA modules build
# Sentinel topologies of six redis processes, the partition ones on network namespaces whose /24
# is drawn at random from 150; one at a time keeps them from starving each other's failovers.
SHARED_GROUPS = {"test_ha_partition": "ha", "test_ha_sentinel": "ha"}
# Modules with a test marked with one of these run first, so that no worker starts a minute-long
# module when the others are already done.
LONG_MARKS = ("slow", "durability")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under xdist's `loadgroup`, put each test in its module's group (see SHARED_GROUPS).

    On an xdist worker `--dist loadgroup` shows as `option.loadgroup`; xdist's own
    `pytest_collection_modifyitems` then turns the marks into the node ids its scheduler groups
    by (marks added in that hook itself come too late for it).
    """
    if getattr(item.config.option, "loadgroup", False) and \
            item.get_closest_marker("xdist_group") is None:
        item.add_marker(pytest.mark.xdist_group(SHARED_GROUPS.get(item.path.stem,
                                                                  item.path.stem)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist's `loadgroup`, modules with long tests (LONG_MARKS) first."""
    if not getattr(config.option, "loadgroup", False):
        return
    long_modules = {item.path for item in items
                    if any(item.get_closest_marker(mark) for mark in LONG_MARKS)}
    items.sort(key=lambda item: item.path not in long_modules)  # stable: modules stay whole


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
