"""On a Redis Cluster, with real processes: three primaries (harness.cluster), the Procfile's web
and worker on a `redis+cluster://` URL with the default `{bull}` prefix, Node BullMQ on the same
queue through an ioredis Cluster, the CLI and /health/redis. Afterwards every key on every node
is checked: all of slackq's (BullMQ's, the limiter's, the effect log's, the job index's, the ack
mark's) hash to the prefix's one slot, and no node ever answered CROSSSLOT."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from bullmq import Queue
from redis.exceptions import ClusterCrossSlotError, RedisClusterException

from harness.cluster import ClusterTopology, key_slot
from harness.slack_standin import FakeSlack
from harness.topology import ask
from slackq.connection import OPERATOR, PROBE, redis_client, sync_redis_client
from slackq.contract import job_options
from slackq.settings import Settings
from tests.cluster_support import (
    cluster,  # noqa: F401 - fixture
    cluster_unavailable_reason,
    crossslot_errors,
    keys_outside_slot,
    reset_error_stats,
)
from tests.interop import node_config, node_script, node_skip_reason
from tests.prerequisites import requires
from tests.processes import Proc, process_env
from tests.security_support import procfile_stack, run_cli
from tests.slack_requests import BOT_TOKEN, app_mention_envelope, encode, signed_headers

pytestmark = [requires("a local Redis Cluster", cluster_unavailable_reason()),
              requires("Node BullMQ interop", node_skip_reason())]

PREFIX = "{bull}"
QUEUE = "slack-events"


async def post(base: str, envelope: dict[str, object]) -> int:
    body = encode(envelope)
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base}/slack/events", content=body,
                                   headers=signed_headers(body), timeout=10)
    return response.status_code


def mention(index: int) -> dict[str, object]:
    # A channel each: the limiter's per-channel pacing does not space the replies out.
    return app_mention_envelope(f"Ev0CL{index:04d}", channel=f"C0CL{index:04d}",
                                ts=f"1700000000.{index:06d}")


async def test_web_worker_node_and_cli_on_a_cluster(
    cluster: ClusterTopology, fake_slack: FakeSlack, tmp_path: Path,  # noqa: F811 - fixture
) -> None:
    settings = Settings(redis_url=cluster.url)
    assert settings.queue_prefix == PREFIX
    reset_error_stats(cluster)
    with procfile_stack(cluster.url, fake_slack, tmp_path) as (base, _web, worker):
        for index in range(1, 6):
            assert await post(base, mention(index)) == 200
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{base}/health/redis", timeout=5)).json()
        assert health["healthy"] is True and health["maxmemory_policy"] == "noeviction"
        # Node enqueues a job in slackq's documented shape; slackq's worker replies to it.
        envelope = mention(6)
        jobs = [{"name": "app_mention", "data": envelope,
                 "opts": job_options("Ev0CL0006", settings)}]
        async with node_script("producer", node_config(cluster.url, QUEUE, PREFIX,
                                                        jobs=jobs)) as node:
            [added] = await node.wait_for("added")
            await node.finish()
        assert added["id"] == "Ev0CL0006"
        calls = fake_slack.wait_for_calls("chat.postMessage", 6, timeout=30)
        seen = set(cluster.keys_everywhere())  # the limiter's keys expire within seconds
        assert sorted(call.args["thread_ts"] for call in calls) == [
            f"1700000000.{index:06d}" for index in range(1, 7)]
        assert all(call.headers["Authorization"] == f"Bearer {BOT_TOKEN}" for call in calls)
        # slackq's webhook enqueues; a Node worker (the only one now) takes the job.
        worker.stop()
        async with node_script("worker", node_config(cluster.url, QUEUE, PREFIX,
                                                      mode="complete", limit=1)) as node:
            assert await post(base, mention(7)) == 200
            messages = await node.finish(within=30)
        [processed] = [m for m in messages if m["event"] == "process"]
        assert (processed["id"], processed["name"]) == ("Ev0CL0007", "app_mention")
    code, output = await asyncio.to_thread(run_cli, cluster.url, "status", "--json")
    assert code == 0, output
    assert json.loads(output)["counts"]["completed"] == 7
    code, output = await asyncio.to_thread(run_cli, cluster.url, "doctor", "--json")
    checks = {check["name"]: check["level"] for check in json.loads(output)["checks"]}
    assert checks["eviction policy"] == "ok", output
    probe = sync_redis_client(cluster.url, PROBE)  # the /metrics collector's kind of client
    try:
        assert probe.llen(f"{PREFIX}:{QUEUE}:wait") == 0
    finally:
        probe.close()

    keys = sorted(seen | set(cluster.keys_everywhere()))
    # Each writer left keys: BullMQ's, the ack's dedup, the job index's, the limiter's.
    kinds = {key.split(":")[3] if ":slackq:" in key else key.split(":")[2] for key in keys}
    assert {"completed", "de", "index", "rate"} <= kinds, keys
    owner = cluster.node(cluster.owner_port(PREFIX) or 0)
    fields = ask(owner.host, owner.port, lambda client: client.hkeys(f"{PREFIX}:{QUEUE}:Ev0CL0001"))
    assert any(str(f).startswith("slackq:done:") for f in fields or []), fields  # effect log
    assert keys_outside_slot(keys, PREFIX) == []
    assert crossslot_errors(cluster) == {}


def test_the_checks_see_a_key_outside_the_slot_and_a_crossslot_reply(
    cluster: ClusterTopology,  # noqa: F811 - fixture
) -> None:
    """The control: a key without the tag is reported, and so is a CROSSSLOT reply."""
    assert keys_outside_slot([f"{PREFIX}:x:1", "bull:x:1"], PREFIX) == ["bull:x:1"]
    assert key_slot("bull:x:1") != key_slot(PREFIX)
    node = cluster.node(cluster.owner_port("a") or 0)
    reset_error_stats(cluster)
    with pytest.raises(ClusterCrossSlotError):
        ask(node.host, node.port, lambda client: client.execute_command(
            "EVAL", "return 1", 2, "a", "b"))
    assert list(crossslot_errors(cluster)) == [node.port]
    reset_error_stats(cluster)


def test_a_prefix_without_a_hash_tag_stops_start_up(
    cluster: ClusterTopology, tmp_path: Path,  # noqa: F811 - fixture
) -> None:
    """The worker as a process (the web process reads its settings the same way, through
    `load_settings`: tests/test_ha_cluster_url.py), and the CLI."""
    env = process_env(REDIS_URL=cluster.url, QUEUE_PREFIX="bull", SLACK_BOT_TOKEN=BOT_TOKEN)
    proc = Proc("worker", env, tmp_path)
    try:
        code = proc.wait(30)
    finally:
        proc.stop()
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "QUEUE_PREFIX" in lines[0], proc.output()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("QUEUE_PREFIX", "bull")
        code, output = run_cli(cluster.url, "status")
    assert code == 2 and output.count("\n") == 1 and "QUEUE_PREFIX" in output, output


async def test_the_ports_add_bulk_is_refused_by_a_cluster_pipeline(
    cluster: ClusterTopology,  # noqa: F811 - fixture
) -> None:
    """Upstream: the port's `Queue.addBulk` calls its scripts through a redis-py pipeline, whose
    cluster form refuses `evalsha`. slackq does not use it; this names the day it works."""
    client = redis_client(cluster.url, OPERATOR)
    queue = Queue(QUEUE + "-bulk", {"connection": client, "prefix": PREFIX})
    try:
        with pytest.raises(RedisClusterException, match="evalsha is blocked"):
            await queue.addBulk([{"name": "n", "data": {}}])
        assert (await queue.add("n", {})).id  # one at a time works
    finally:
        await queue.close()
        await client.aclose()
