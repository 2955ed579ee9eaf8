"""Enqueue COUNT jobs from Python and print {"seconds": ...}.

    python bench/py_enqueue.py MODE CLIENT COUNT QUEUE REDIS_URL TAG

MODE: sequential (await each add), concurrent (100 adds in flight, `gather`), bulk (addBulk of 100).
CLIENT: `port` (a Queue on the port's own single-connection client), `slackq` (the web process's
Enqueuer as it is: pooled client, time budget, batching of concurrent adds), or `blocking` (a
Queue on a redis-py client whose pool of 64 waits for a free connection instead of failing).
Prints {"seconds": ..., "failed": ...}: adds that raised are counted, not retried.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bullmq import Queue
from redis.asyncio import BlockingConnectionPool, Redis

from bench.common import JOB_NAME, job_id, options, payload
from producers.enqueue import Enqueuer
from producers.jobs import SlackJob
from slackq.connection import redis_kwargs
from slackq.errors import RedisUnavailable
from slackq.settings import Settings


def make_queue(client: str, queue_name: str, url: str) -> Queue:
    if client == "blocking":
        pool = BlockingConnectionPool(**redis_kwargs(url), max_connections=64, timeout=2,
                                      decode_responses=True)
        return Queue(queue_name, {"connection": Redis(connection_pool=pool)})
    return Queue(queue_name, {"connection": redis_kwargs(url)})


async def run(mode: str, client: str, count: int, queue_name: str, url: str,
              tag: str) -> tuple[float, int]:
    ids = [job_id(tag, i) for i in range(count)]
    datas = {i: payload(i) for i in ids}
    settings = Settings(redis_url=url, queue_name=queue_name)
    enqueuer = Enqueuer(settings) if client == "slackq" else None
    queue = enqueuer.queue if enqueuer else make_queue(client, queue_name, url)
    failed = 0

    async def add(event_id: str) -> Any:
        nonlocal failed
        if enqueuer is not None:
            try:
                return await enqueuer.add(SlackJob(JOB_NAME, datas[event_id], event_id))
            except RedisUnavailable:
                failed += 1
                return None
        return await queue.add(JOB_NAME, datas[event_id], options(event_id))

    started = time.perf_counter()
    if mode == "sequential":
        for event_id in ids:
            await add(event_id)
    elif mode == "concurrent":
        for start in range(0, count, 100):
            await asyncio.gather(*(add(i) for i in ids[start:start + 100]))
    else:
        for start in range(0, count, 100):
            await queue.addBulk([{"name": JOB_NAME, "data": datas[i], "opts": options(i)}
                                 for i in ids[start:start + 100]])
    seconds = time.perf_counter() - started
    await (enqueuer.close() if enqueuer else queue.close())
    return seconds, failed


def main(argv: list[str]) -> int:
    mode, client, count, queue_name, url, tag = argv
    seconds, failed = asyncio.run(run(mode, client, int(count), queue_name, url, tag))
    print(json.dumps({"seconds": seconds, "failed": failed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
