"""Multi-workspace mode on a Redis Cluster (real processes: two workers on a `redis+cluster://`
URL with the default `{bull}` prefix, a SQLite store, the Slack stand-in). A job of an installed
team is answered with its token; a token refresh whose save the store refuses takes the refresh
lock and leaves the held-refresh marker, both in the `{bull}` slot with every other key written
(each key written is seen, even the lock's short life); an uninstall handled by one process
empties the other's cache through the pub/sub feed on the cluster (redis-py's ClusterPubSub).
The control: the same team deleted behind slackq's back, with no announcement, is still served
by both processes from their caches, which is what the bystander would go on doing without the
feed."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bullmq import Queue

from harness.cluster import ClusterTopology
from harness.slack_standin import FakeSlack, Grant
from harness.topology import ask
from slackq.connection import OPERATOR, PROBE, redis_client, sync_redis_client
from slackq.settings import Settings
from tests.cluster_support import (
    cluster,  # noqa: F401 - fixture
    cluster_unavailable_reason,
    crossslot_errors,
    keys_outside_slot,
    keys_written,
    reset_error_stats,
)
from tests.databases import token_key
from tests.prerequisites import requires
from tests.processes import Proc, process_env
from tests.waiting import wait_until
from tests.worker_helpers import JOBS
from tests.workspace_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    REFUSE_SAVES,
    Jobs,
    delete_behind_slackq,
    events,
    handled,
    install,
    lifecycle_event,
    multi_env,
    multi_settings,
    store_ddl,
)
from worker.installation_changes import channel_name

pytestmark = requires("a local Redis Cluster", cluster_unavailable_reason())

PREFIX = "{bull}"
TOKEN_A = "xoxb-A-cluster-not-real"
OLD_R = "xoxe.xoxb-1-T0R-old-not-real"
REFRESH_LOCK = f"{PREFIX}:slackq:token-refresh:-:T0R"

def listeners(topology: ClusterTopology, channel: str) -> int:
    """Subscribers of `channel` on every node (PUBSUB NUMSUB counts a node's own only)."""
    return sum(count for node in topology.alive()
               for _, count in ask(node.host, node.port,
                                   lambda client: client.pubsub_numsub(channel)) or [])

@pytest.fixture
async def multi(fake_slack: FakeSlack, tmp_path: Path,
                   cluster: ClusterTopology) -> Settings:  # noqa: F811 - fixture
    """T0A installed; T0R installed with a token due for refresh, whose save the store refuses."""
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    multi = multi_settings(cluster.url, fake_slack.base_url,
                              f"sqlite:///{tmp_path / 'store.db'}", token_key())
    assert multi.queue_prefix == PREFIX
    await install(multi, team="T0A", token=TOKEN_A)
    await install(multi, team="T0R", token=OLD_R, expires_in=30,
                  refresh_token=fake_slack.grant_refresh_token(Grant(team_id="T0R")))
    await store_ddl(multi, REFUSE_SAVES["sqlite"])
    return multi

@pytest.fixture
async def workers(multi: Settings, fake_slack: FakeSlack, tmp_path: Path,
                  cluster: ClusterTopology) -> AsyncIterator[list[Proc]]:  # noqa: F811
    # A cache longer than the test: without the feed, a stale token would be used throughout.
    env = process_env(REDIS_URL=cluster.url, SLACK_API_URL=fake_slack.base_url,
                      SLACKQ_INSTALLATION_CACHE_SECONDS="600", SLACK_TOKEN_REFRESH_SECONDS="60",
                      WORKER_CONCURRENCY="1", WORKER_RATE_PER_CHANNEL="0",
                      WORKER_RATE_PER_TEAM="0",
                      **multi_env(multi.database(), multi.token_keys()))
    procs = [Proc(f"worker-{n}", env, tmp_path, [sys.executable, "-m", "worker"]) for n in (1, 2)]
    try:
        await asyncio.gather(*(asyncio.to_thread(proc.wait_for_output, "worker_started", 30)
                               for proc in procs))
        channel = channel_name(PREFIX)
        await wait_until(lambda: listeners(cluster, channel) == 2, 20, "both processes listen")
        yield procs
    finally:
        for proc in procs:
            proc.stop()

@pytest.fixture
async def jobs(cluster: ClusterTopology) -> AsyncIterator[Jobs]:  # noqa: F811 - fixture
    client = redis_client(cluster.url, OPERATOR)
    admin = sync_redis_client(cluster.url, PROBE)
    queue = Queue("slack-events", {"connection": client, "prefix": PREFIX})
    try:
        yield Jobs(queue, admin, PREFIX)
    finally:
        await queue.close()
        await client.aclose()
        admin.close()

async def test_tokens_refresh_and_uninstall_broadcast_on_a_cluster(
        cluster: ClusterTopology, multi: Settings,  # noqa: F811 - fixture
        fake_slack: FakeSlack, jobs: Jobs, workers: list[Proc]) -> None:
    reset_error_stats(cluster)
    with keys_written(cluster) as written:
        # The refresh: Slack rotates T0R's token, the store refuses it, the process holds it.
        rotated = await jobs.add("Ev0RT", "T0R")
        await jobs.ended([rotated])
        assert jobs.admin.zscore(f"{PREFIX}:slack-events:completed", rotated) is not None
        assert fake_slack.tokens_used("chat.postMessage") == fake_slack.issued_tokens[:1]
        assert jobs.admin.exists(f"{REFRESH_LOCK}:held") == 1

        await jobs.until_each_handled(workers, "Ev0WA", "T0A")  # both hold T0A's token
        # Control: deleted behind slackq's back (no announcement), T0A is still served by
        # each process from its cache.
        await delete_behind_slackq(multi, "T0A")
        await jobs.until_each_handled(workers, "Ev0CA", "T0A")
        assert set(fake_slack.tokens_used("chat.postMessage")[1:]) == {TOKEN_A}
        used_before = fake_slack.tokens_used("chat.postMessage")

        uninstall = lifecycle_event("Ev0UNA", "T0A", {"type": "app_uninstalled"})
        await jobs.queue.add("app_uninstalled", uninstall, JOBS.for_job("Ev0UNA"))
        await jobs.ended(["Ev0UNA"])
        [uninstaller] = [proc for proc in workers if events(proc, "slack_app_uninstalled")]
        await jobs.until_each_handled(workers, "Ev0AA", "T0A", "job_failed_permanently")
    bystander = next(proc for proc in workers if proc is not uninstaller)
    assert handled(bystander, "Ev0AA", "job_failed_permanently")  # its cache held T0A
    assert fake_slack.tokens_used("chat.postMessage") == used_before

    assert {REFRESH_LOCK, f"{REFRESH_LOCK}:held"} <= written, sorted(written)
    keys = sorted(written | set(cluster.keys_everywhere()))

    assert keys_outside_slot(keys, PREFIX) == []
    assert crossslot_errors(cluster) == {}
    logs = "".join(proc.output() for proc in workers)
    assert TOKEN_A not in logs and "xoxb-" not in logs
