"""A worker whose two Redis clients briefly disagree on the primary (the partition campaign's
lost events): the BullMQ connection already on the new primary, where it fetched a job, the
command client (effect claims) still on the old one, which never had that job.

Each client left an old primary on its own primary check, up to a check interval apart; they
now share one and leave in the same tick (slackq/sentinel_pool.py), but a client that
reconnects on an error still asks the sentinels on its own. Here the command client is pointed
at a second, empty server for the worker's whole life: the claim finds no job hash. Before,
that failed the job for good (`job_removed`) on the server that held it: an acknowledged event
never answered. The control is the test's first assertion: on that code the job ends
`failed`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Queue
from structlog.testing import capture_logs

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.waiting import wait_until
from tests.worker_app import app_registry
from tests.worker_helpers import add_mention, job_state
from worker import runner
from worker.limiter import Limits
from worker.runner import WorkerOptions, start_worker


@pytest.fixture
def other_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """The old primary as the late client still sees it: a server without the job."""
    server = RedisProcess(data_dir=tmp_path / "other")
    server.start()
    yield server
    server.kill()


async def test_a_claim_on_a_server_without_the_job_defers_the_job_instead_of_failing_it(
    settings: Settings, fake_slack: FakeSlack, queue: Queue, aclient: aioredis.Redis,
    other_server: RedisProcess, monkeypatch: pytest.MonkeyPatch,
) -> None:
    options = replace(WorkerOptions.from_settings(settings), limits=Limits(0, 0),
                      grace_seconds=3)
    command_client = runner.command_client

    def on_the_other_server(url: str, opts: WorkerOptions, name: str | None = None) -> Any:
        return command_client(other_server.url, opts, name)

    monkeypatch.setattr(runner, "command_client", on_the_other_server)
    split = await start_worker(settings, app_registry(), options)
    try:
        with capture_logs() as logs:
            await add_mention(queue, "Ev0SPLIT001")
            await wait_until(lambda: _state_in(aclient, settings, "Ev0SPLIT001",
                                               {"delayed", "failed"}), 10, "the claim answered")
    finally:
        await split.stop()
    assert await job_state(aclient, settings, "Ev0SPLIT001") == "delayed"  # not failed
    assert any(e["event"] == "job_deferred" and "not on the server" in e["reason"]
               for e in logs)
    assert fake_slack.calls_to("chat.postMessage") == []
    # Once the claim reaches the server that holds the job (the pools agree), it runs.
    monkeypatch.setattr(runner, "command_client", command_client)
    agreed = await start_worker(settings, app_registry(), options)
    try:
        await wait_until(lambda: _state_in(aclient, settings, "Ev0SPLIT001", {"completed"}),
                         15, "the job completed")
    finally:
        await agreed.stop()
    assert len(fake_slack.calls_to("chat.postMessage")) == 1


async def _state_in(client: aioredis.Redis, settings: Settings, job_id: str,
                    states: set[str]) -> bool:
    return await job_state(client, settings, job_id) in states
