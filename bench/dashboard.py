"""The dashboard with 100,000 jobs in Redis, and the webhook's ack latency while someone browses.

    python bench/dashboard.py [--jobs 100000] [--rate 100] [--seconds 10] [--reps 3]

Starts a redis-server (the project's redis.conf) and fills it as production would: jobs with the
webhook's options and their job-index entries (slackq/job_index.py), over 50 teams, 500 channels
and a small vocabulary; the first 2% run through a BullMQ worker that fails half of them, the rest
wait (no worker). Then the web process runs as the Procfile runs it (`python -m producers`, with
`ADMIN_PASSWORD`, so webhook and dashboard share one process and event loop), and the script

1. times dashboard pages over HTTP (keep-alive, one at a time): the overview, a job list page,
   and filtered lists through the index;
2. sends signed events at a fixed rate (bench/webhook.py's open-loop Node generator) with nobody
   browsing, while a "browser" thread goes round overview, a search and teams a page a second,
   and while it fetches them back to back (far more than a person does); the three take turns
   `--reps` times; p50/p99 are medians of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

import httpx  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from bullmq import Queue, Worker  # noqa: E402

from bench.webhook import SECRET, cpu_seconds, run_rate, server  # noqa: E402
from slackq.connection import bullmq_connection  # noqa: E402
from slackq.contract import job_options  # noqa: E402
from slackq.embedded import RedisProcess, free_port  # noqa: E402
from slackq.job_index import JobIndex, retention_seconds  # noqa: E402
from slackq.settings import Settings  # noqa: E402
from tests.slack_requests import app_mention_envelope  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

ADMIN = ("admin", "bench-admin-password")
WORDS = ("deploy billing restart invoice prod staging error timeout login report weekly "
         "customer refund alert database backup review merge release rollback").split()
CHUNK = 1000
PAGES = {
    "overview": "/admin/",
    "jobs: wait, page 1": "/admin/jobs?state=wait",
    "jobs: wait, page 500": "/admin/jobs?state=wait&page=500",
    "jobs: failed, page 1": "/admin/jobs?state=failed",
    "search: channel": "/admin/jobs?state=all&channel=C0123",
    "search: team + 2 words": "/admin/jobs?state=all&team=T07&text=deploy+billing",
    "search: failed + word": "/admin/jobs?state=failed&text=refund",
    "teams": "/admin/teams",
}


def envelope(n: int, rng: random.Random) -> dict[str, Any]:
    text = " ".join(rng.choice(WORDS) for _ in range(8))
    return app_mention_envelope(f"EvB{n:07d}", team_id=f"T{n % 50:02d}",
                                channel=f"C{n % 500:04d}", text=f"<@U0BOT> {text}",
                                ts=f"1700000000.{n:06d}")


async def add_jobs(url: str, first: int, count: int, fail_every: int = 0) -> None:
    """Store `count` jobs as the webhook does (job + index entry), CHUNK at a time."""
    settings, rng = Settings(redis_url=url, job_attempts=1), random.Random(first)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    queue = Queue(settings.queue_name, {"connection": client})
    index = JobIndex(client, "bull", settings.queue_name,
                     retention_seconds(settings.job_keep_completed_seconds,
                                       settings.job_keep_failed_seconds))
    for start in range(first, first + count, CHUNK):
        batch = [envelope(n, rng) for n in range(start, min(start + CHUNK, first + count))]
        if fail_every:
            for n, env in enumerate(batch):
                if n % fail_every == 0:
                    env["event"]["text"] += " boom"
        await queue.addBulk([{"name": "app_mention", "data": env,
                              "opts": job_options(env["event_id"], settings)} for env in batch])
        for part in range(0, len(batch), 50):  # the pool's connections, not one per job
            await asyncio.gather(*(index.record(env["event_id"], "app_mention", env)
                                   for env in batch[part:part + 50]))
    await queue.close()
    await client.aclose()


async def run_worker_until_done(url: str, total: int) -> None:
    """Process what is queued with a worker that fails jobs whose text says "boom"."""
    async def process(job: Any, _token: str) -> str:
        if "boom" in job.data["event"]["text"]:
            raise RuntimeError("boom: the handler failed")
        return "ok"

    queue = Queue("slack-events", {"connection": bullmq_connection(url)})
    worker = Worker("slack-events", process, {"connection": bullmq_connection(url),
                                              "concurrency": 50})

    async def done() -> bool:
        return sum((await queue.getJobCounts("failed", "completed")).values()) >= total

    await wait_until(done, within=600, what=f"{total} jobs processed")
    await worker.close()
    await queue.close()


def fill(url: str, jobs: int) -> None:
    processed = jobs // 50
    started = time.monotonic()
    asyncio.run(add_jobs(url, 0, processed, fail_every=2))
    asyncio.run(run_worker_until_done(url, processed))
    asyncio.run(add_jobs(url, processed, jobs - processed))
    print(f"filled {jobs} jobs ({processed} processed, half failed) in "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def time_pages(base: str, reps: int, pid: int) -> list[tuple[str, float, float, float, int]]:
    """(page, median ms, max ms, web process CPU ms, bytes) for each page, fetched `reps` times
    after a warm-up. The CPU a page costs the web process is what a webhook request waits
    behind, and depends less on other load on the machine than the times."""
    rows = []
    with httpx.Client(base_url=base, auth=ADMIN, timeout=60) as client:
        for name, path in PAGES.items():
            assert client.get(path).status_code == 200, path
            times, size = [], 0
            cpu_before = cpu_seconds(pid)
            for _ in range(reps):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                size = len(response.content)
            cpu_ms = (cpu_seconds(pid) - cpu_before) / reps * 1000
            rows.append((name, statistics.median(times), max(times), cpu_ms, size))
    return rows


def browsing(base: str, stop: threading.Event, served: list[int], pause: float) -> None:
    """An operator going round overview, a search and teams, `pause` seconds between pages
    (0: as fast as the pages come, far more than a person clicks)."""
    paths = [PAGES["overview"], PAGES["search: team + 2 words"], PAGES["teams"]]
    with httpx.Client(base_url=base, auth=ADMIN, timeout=60) as client:
        while not stop.wait(pause):
            client.get(paths[served[0] % len(paths)])
            served[0] += 1


def ack_runs(port: int, rate: int, seconds: float, reps: int,
             work: Path) -> dict[str, list[tuple[float, float, int]]]:
    """(p50, p99, pages served) per run: nobody browsing, a page a second, back to back."""
    pauses = {"nobody browsing": None, "a page a second": 1.0, "pages back to back": 0.0}
    results: dict[str, list[tuple[float, float, int]]] = {mode: [] for mode in pauses}
    base = f"http://127.0.0.1:{port}"
    run_rate(port, 200, 1.0, "Warm", work)
    for rep in range(reps):
        for mode in results:
            stop, served, pause = threading.Event(), [0], pauses[mode]
            thread = threading.Thread(target=browsing, args=(base, stop, served, pause or 0.0),
                                      daemon=True)
            if pause is not None:
                thread.start()
            result = run_rate(port, rate, seconds, f"R{rep}{mode[0]}", work)
            stop.set()
            if pause is not None:
                thread.join(60)
            results[mode].append((result.percentile(0.5), result.percentile(0.99), served[0]))
            print(f"  {mode:>18}: p50 {result.percentile(0.5):.2f} ms, p99 "
                  f"{result.percentile(0.99):.2f} ms, errors {result.errors}, pages {served[0]}",
                  file=sys.stderr, flush=True)
    return results


def report(pages: list[tuple[str, float, float, float, int]],
           acks: dict[str, list[tuple[float, float, int]]], args: argparse.Namespace) -> None:
    median: Callable[[list[float]], float] = statistics.median
    print(f"\n{args.jobs} jobs in Redis; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| page | median ms | max ms | web process CPU ms | KB |\n|---|---|---|---|---|")
    for name, med, worst, cpu, size in pages:
        print(f"| {name} | {med:.1f} | {worst:.1f} | {cpu:.1f} | {size / 1024:.0f} |")
    print(f"\nwebhook at {args.rate} events/s for {args.seconds:g} s, medians of {args.reps} "
          "runs\n\n| | ack p50 ms | ack p99 ms | dashboard pages served |\n|---|---|---|---|")
    for mode, runs in acks.items():
        print(f"| {mode} | {median([r[0] for r in runs]):.2f} | "
              f"{median([r[1] for r in runs]):.2f} | {median([float(r[2]) for r in runs]):.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--page-reps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="slackq-bench-dash-") as tmp:
        work = Path(tmp)
        redis_server = RedisProcess(data_dir=work / "redis")
        redis_server.start()
        try:
            fill(redis_server.url, args.jobs)
            port = free_port()
            env = {**os.environ, "SLACK_SIGNING_SECRET": SECRET, "REDIS_URL": redis_server.url,
                   "LOG_FORMAT": "json", "PORT": str(port),
                   "ADMIN_PASSWORD": ADMIN[1]}
            with server([sys.executable, "-m", "producers"], env, port, work / "web.log") as pid:
                pages = time_pages(f"http://127.0.0.1:{port}", args.page_reps, pid)
                acks = ack_runs(port, args.rate, args.seconds, args.reps, work)
        finally:
            redis_server.stop()
    report(pages, acks, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
