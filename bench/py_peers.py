"""arq and saq, the Python peers of `bench/run.py --only realistic`, run by `.venv-bench`'s Python.

    py_peers.py worker  arq|saq QUEUE CONCURRENCY REDIS_URL SLACK_API_URL|-
    py_peers.py enqueue arq|saq QUEUE COUNT REDIS_URL AT TAG

`worker` runs one process of the peer with CONCURRENCY jobs in flight; each job posts one
threaded `chat.postMessage` with aiohttp to SLACK_API_URL (one session per process, like slackq's
worker), or does nothing when it is `-`. It prints `worker_started` when ready. `enqueue` adds
COUNT jobs carrying the 1.1 KB payload of $BENCH_PEER_PAYLOAD (`__ID__` standing for the event id)
scheduled for the epoch time AT, so that a drain starts at once with every job already stored
(neither peer can pause a queue). Standard library + arq/saq/aiohttp only: `.venv-bench` has no
slackq.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import signal
import sys
from typing import Any

import aiohttp


async def post(session: aiohttp.ClientSession | None, slack: str, payload: dict[str, Any]) -> Any:
    if session is None:
        return None
    event = payload["event"]
    body = {"channel": event["channel"], "thread_ts": event.get("thread_ts") or event["ts"],
            "text": f"<@{event['user']}> got it!"}
    async with session.post(f"{slack}chat.postMessage", json=body,
                            headers={"Authorization": "Bearer xoxb-fake"}) as response:
        answer = await response.json()
    if not answer.get("ok"):
        raise RuntimeError(answer.get("error"))
    return {"channel": answer.get("channel"), "ts": answer.get("ts")}


def new_session(slack: str) -> aiohttp.ClientSession | None:
    # The same connector limit as slackq's Slack client would not matter: 50 in flight < 100.
    return None if slack == "-" else aiohttp.ClientSession()


async def run_arq(queue: str, concurrency: int, url: str, slack: str) -> None:
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    async def reply(ctx: dict[str, Any], payload: dict[str, Any]) -> Any:
        return await post(ctx["session"], slack, payload)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["session"] = new_session(slack)
        print("worker_started", flush=True)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("session") is not None:
            await ctx["session"].close()

    # poll_delay: arq's default 0.5 s caps a drain at about max_jobs / 0.5 s; 10 ms lets it run.
    worker = Worker(functions=[func(reply, name="reply")], queue_name=queue,
                    redis_settings=RedisSettings.from_dsn(url), max_jobs=concurrency,
                    poll_delay=0.01, on_startup=startup, on_shutdown=shutdown,
                    handle_signals=True)
    await worker.main()


async def run_saq(queue_name: str, concurrency: int, url: str, slack: str) -> None:
    from saq import Queue, Worker

    async def reply(ctx: dict[str, Any], *, payload: dict[str, Any]) -> Any:
        return await post(ctx["session"], slack, payload)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["session"] = new_session(slack)
        print("worker_started", flush=True)

    async def shutdown(ctx: dict[str, Any]) -> None:
        if ctx.get("session") is not None:
            await ctx["session"].close()

    queue = Queue.from_url(url, name=queue_name)
    worker = Worker(queue, functions=[("reply", reply)], concurrency=concurrency,
                    startup=startup, shutdown=shutdown)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    task = asyncio.create_task(worker.start())
    await stopping.wait()
    await worker.stop()
    await asyncio.gather(task, return_exceptions=True)


def payloads(tag: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    template = os.environ["BENCH_PEER_PAYLOAD"]
    ids = [f"Ev{tag}x{i:07d}" for i in range(count)]
    return [(i, json.loads(template.replace("__ID__", i))) for i in ids]


async def enqueue(impl: str, queue_name: str, count: int, url: str, at: float, tag: str) -> None:
    jobs = payloads(tag, count)
    if impl == "arq":
        from arq import create_pool
        from arq.connections import RedisSettings

        pool = await create_pool(RedisSettings.from_dsn(url), default_queue_name=queue_name)
        when = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
        for start in range(0, count, 100):
            await asyncio.gather(*(pool.enqueue_job("reply", data, _job_id=event_id,
                                                    _defer_until=when)
                                   for event_id, data in jobs[start:start + 100]))
        await pool.aclose()
        return
    from saq import Queue

    queue = Queue.from_url(url, name=queue_name)
    await queue.connect()
    for start in range(0, count, 100):
        await asyncio.gather(*(queue.enqueue("reply", key=event_id, scheduled=int(at),
                                             payload=data)
                               for event_id, data in jobs[start:start + 100]))
    await queue.disconnect()


def main(argv: list[str]) -> int:
    if argv[0] == "enqueue":
        impl, queue, count, url, at, tag = argv[1:]
        asyncio.run(enqueue(impl, queue, int(count), url, float(at), tag))
        return 0
    impl, queue, concurrency, url, slack = argv[1:]
    runner = run_arq if impl == "arq" else run_saq
    asyncio.run(runner(queue, int(concurrency), url, slack))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
