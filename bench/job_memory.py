"""Redis memory per queued Slack job, for sizing (docs/operating.md, "Redis sizing").

    .venv/bin/python -m bench.job_memory [JOBS]

Starts a throwaway redis-server with the project's redis.conf, enqueues JOBS app_mention jobs the
way the webhook does (same job options: dedup key, event stream entry), and prints the bytes of
`used_memory` each job added, and the job hash alone (MEMORY USAGE).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import redis
from bullmq import Queue

from slackq.connection import bullmq_connection
from slackq.contract import JobOptions
from slackq.embedded import RedisProcess
from slackq.settings import Settings
from tests.slack_requests import app_mention_envelope


async def measure(jobs: int) -> None:
    server = RedisProcess(data_dir=Path(tempfile.mkdtemp(prefix="slackq-bench-")))
    server.start()
    queue = Queue("slack-events", {"connection": bullmq_connection(server.url)})
    client = redis.Redis(port=server.port)
    options = JobOptions.from_settings(Settings())
    try:
        before = int(client.info("memory")["used_memory"])
        for index in range(jobs):
            job_id = f"Ev{index:08d}B"
            await queue.add("app_mention", app_mention_envelope(job_id), options.for_job(job_id))
        added = int(client.info("memory")["used_memory"]) - before
        print(f"{jobs} waiting jobs: {added / jobs:.0f} bytes each (job hash, dedup key, "
              f"event stream entry, wait list)")
        print(f"one job hash: {client.memory_usage('bull:slack-events:Ev00000000B')} bytes")
    finally:
        await queue.close()
        client.close()
        server.kill()


if __name__ == "__main__":
    asyncio.run(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
