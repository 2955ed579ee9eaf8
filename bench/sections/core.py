"""What every section of `bench/run.py` shares: the run, workers under test, queue helpers,
tables."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from bullmq import Queue

from bench.common import (
    BENCH_DIR,
    JOB_NAME,
    NODE_DIR,
    NODE_MODULES_DIR,
    Background,
    cpu_seconds,
    job_id,
    job_template,
    options,
    payload,
)
from slackq.settings import usable_cpus

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass
class Run:
    """Where everything of one benchmark run lives."""

    url: str
    server_pid: int
    workdir: Path
    reps: int
    scale: float
    results: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    counter: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    # `--base`: another checkout (e.g. main's worktree) whose slackq worker runs next to this
    # one's as `slackq@base` (and `dyno@base`), for a before/after in one run.
    base: Path | None = None

    def tree(self, impl: str) -> tuple[Path, str]:
        """(checkout, Python) that runs `impl`: `--base`'s for `...@base`, else this one's."""
        if not impl.endswith("@base"):
            return ROOT, sys.executable
        assert self.base is not None, f"{impl} needs --base"
        own = self.base / ".venv" / "bin" / "python"
        return self.base, str(own) if own.exists() else sys.executable

    def with_base(self, impls: list[str], *of: str) -> list[str]:
        """`impls` with `X@base` after each X in `of` when `--base` is given."""
        if self.base is None:
            return impls
        return [name for impl in impls
                for name in ([impl, f"{impl}@base"] if impl in of else [impl])]

    def tag(self) -> str:
        self.counter += 1
        return f"{self.counter:04d}"

    def print(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def sync(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


def base_env(run: Run, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "REDIS_", "QUEUE_", "WORKER_"))}
    env.update(REDIS_URL=run.url, SLACK_BOT_TOKEN="xoxb-fake", LOG_FORMAT="json",
               LOG_LEVEL="info", BENCH_JOB_TEMPLATE=job_template(),
               NODE_PATH=str(NODE_MODULES_DIR / "node_modules"))
    env.update(extra)
    return env



def dyno_shape(concurrency: int, processes: int) -> tuple[int, int]:
    """(processes, concurrency per process) for a dyno with `concurrency` jobs in flight."""
    processes = max(1, min(processes, concurrency))
    return processes, max(1, concurrency // processes)


# slackq variants by environment: one process as the port fetches and with its single
# connection; the dyno with the port's single connection (the defaults are in slackq.settings).
VARIANTS: dict[str, dict[str, str]] = {
    "nofetch": {"WORKER_FETCH_NEXT": "0", "WORKER_REDIS_CONNECTIONS": "1"},
    "dyno-1conn": {"WORKER_REDIS_CONNECTIONS": "1"},
}


def start_worker(run: Run, impl: str, queue: str, concurrency: int) -> Background:
    """A worker of `impl` on `queue` with `concurrency` jobs in flight in all (per dyno)."""
    log = run.workdir / f"{impl}-{queue}.log".replace("@", "-")
    if impl == "node":
        argv = ["node", str(NODE_DIR / "worker.js"), queue, str(concurrency), run.url]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    if impl == "port":
        argv = [sys.executable, str(BENCH_DIR / "py_worker.py"), "port", queue, str(concurrency),
                run.url]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    dyno = impl.startswith("dyno")
    processes, per_process = dyno_shape(concurrency, usable_cpus() if dyno else 1)
    env = base_env(run, QUEUE_NAME=queue, WORKER_CONCURRENCY=str(per_process),
                   WORKER_PROCESSES=str(processes), **VARIANTS.get(impl, {}))
    tree, python = run.tree(impl)
    argv = [python, str(tree / "bench" / "py_worker.py"), "dyno"]
    return Background(argv, env, log, '"worker_started"', processes, cwd=tree).wait_ready()


def queue_of(impl: str, concurrency: int) -> str:
    """The queue a `bench/run.py` worker of `impl` drains."""
    return f"q-{impl.replace('@', '-')}-{concurrency}"


def base_label(impl: str, label: str) -> str:
    """`label` of `impl`, marked as the `--base` checkout's when it is."""
    return f"{label}, --base" if impl.endswith("@base") else label


@contextlib.contextmanager
def workers(run: Run, impls: list[str], concurrency: int) -> Iterator[dict[str, Background]]:
    started: dict[str, Background] = {}
    try:
        for impl in impls:
            started[impl] = start_worker(run, impl, queue_of(impl, concurrency), concurrency)
        yield started
    finally:
        for background in started.values():
            background.stop()


async def fill_paused(url: str, queue_name: str, tag: str, count: int, *, name: str = JOB_NAME,
                      data: Callable[[str], dict[str, Any]] = payload) -> None:
    """Add `count` jobs to a paused queue, 500 per `addBulk`; `data` builds each job's payload."""
    queue = Queue(queue_name, {"connection": aioredis.Redis.from_url(url, decode_responses=True)})
    try:
        await queue.pause()
        for start in range(0, count, 500):
            ids = [job_id(tag, i) for i in range(start, min(count, start + 500))]
            await queue.addBulk([{"name": name, "data": data(i), "opts": options(i)}
                                 for i in ids])
    finally:
        await queue.close()


async def resume(url: str, queue_name: str) -> None:
    queue = Queue(queue_name, {"connection": aioredis.Redis.from_url(url, decode_responses=True)})
    try:
        await queue.resume()
    finally:
        await queue.close()


def pending(client: redis.Redis, queue_name: str) -> int:
    pipe = client.pipeline(transaction=False)
    for key in ("wait", "active", "paused", "prioritized"):
        (pipe.zcard if key == "prioritized" else pipe.llen)(f"bull:{queue_name}:{key}")
    return sum(pipe.execute())


def measure_drain(run: Run, worker: Background, queue_name: str, count: int,
                  rss_samples: list[int]) -> float:
    """Fill a paused queue, resume it, time until no job waits or runs: jobs per second."""
    asyncio.run(fill_paused(run.url, queue_name, run.tag(), count))
    client = run.sync()
    try:
        started = time.perf_counter()
        asyncio.run(resume(run.url, queue_name))
        deadline = started + 300
        next_sample = 0.0
        while pending(client, queue_name):
            now = time.perf_counter()
            if now > deadline:
                tail = worker.log_path.read_text()[-2000:]
                raise RuntimeError(f"{queue_name} did not drain:\n{tail}")
            if now >= next_sample:
                rss_samples.append(worker.rss_kb())
                next_sample = now + 0.1
            time.sleep(0.002)
        return count / (time.perf_counter() - started)
    finally:
        client.close()


def settle(run: Run) -> None:
    """Between sections: drop the data and rewrite the AOF so that no rewrite fires mid-run."""
    client = run.sync()
    try:
        client.flushdb()
        if client.config_get("appendonly").get("appendonly") == "yes":
            with contextlib.suppress(redis.ResponseError):
                client.bgrewriteaof()
            deadline = time.monotonic() + 60
            while (client.info("persistence").get("aof_rewrite_in_progress")
                   or client.info("persistence").get("aof_rewrite_scheduled")):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    finally:
        client.close()


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}"


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}" if reference and value == value else "-"


def table(run: Run, header: list[str], rows: list[list[str]]) -> None:
    run.print("| " + " | ".join(header) + " |")
    run.print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        run.print("| " + " | ".join(row) + " |")
    run.print()




def server_cpu(run: Run) -> float:
    """CPU seconds the run's redis-server has used so far."""
    return cpu_seconds(run.server_pid)
