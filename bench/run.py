"""slackq next to Node BullMQ 6.7.0, same Redis, same run: `python bench/run.py`.

Prints Markdown tables (medians of --reps runs, Node and Python runs interleaved) and writes them,
with the raw numbers, to reports/ (ignored by git):

* enqueue: sequential, 100 concurrent (`gather`), addBulk of 100; the port's own client vs the web
  process's Enqueuer (pooled client);
* drain with a no-op processor at concurrency 1/10/100 per dyno: the port's Worker as it ships,
  one slackq worker process, the slackq worker dyno (WORKER_PROCESSES processes);
* end-to-end latency (add -> `completed` event seen) at a fixed 500 jobs/s, with worker CPU;
* RSS idle and busy; drain and enqueue with AOF everysec vs off;
* `--sections realistic` (not in the default run): a drain of `app_mention` jobs at concurrency
  50, each posting one threaded `chat.postMessage` to a loopback Slack (bench/slack_fast.py), by
  one real `python -m worker` process, the 2-process dyno, Node BullMQ, arq and saq (the last two
  from `.venv-bench`, made on first use from requirements-bench.lock), then the same with a
  no-op processor: jobs/s, worker CPU per job, Redis round trips and commands per job.

Redis is a fresh `redis-server` with the project's redis.conf on a free port (never 6379).
Node's side is tests/node's pinned bullmq + ioredis (`npm ci` there on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import bench_venv_python, use_project_venv  # noqa: E402

use_project_venv()

import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from bullmq import Queue  # noqa: E402

from bench.common import (  # noqa: E402
    BENCH_DIR,
    JOB_NAME,
    NODE_DIR,
    NODE_MODULES_DIR,
    Background,
    ensure_node_modules,
    job_id,
    job_template,
    median,
    options,
    payload,
    percentile,
    start_redis,
)
from slackq.settings import usable_cpus  # noqa: E402

REPORTS = ROOT / "reports"


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


# Workers --------------------------------------------------------------------------------------

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
    log = run.workdir / f"{impl}-{queue}.log"
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
    argv = [sys.executable, str(BENCH_DIR / "py_worker.py"), "dyno"]
    return Background(argv, env, log, '"worker_started"', processes).wait_ready()


@contextlib.contextmanager
def workers(run: Run, impls: list[str], concurrency: int) -> Iterator[dict[str, Background]]:
    started: dict[str, Background] = {}
    try:
        for impl in impls:
            started[impl] = start_worker(run, impl, f"q-{impl}-{concurrency}", concurrency)
        yield started
    finally:
        for background in started.values():
            background.stop()


# Queue helpers (driver side) ------------------------------------------------------------------

async def fill_paused(url: str, queue_name: str, tag: str, count: int) -> None:
    queue = Queue(queue_name, {"connection": aioredis.Redis.from_url(url, decode_responses=True)})
    try:
        await queue.pause()
        for start in range(0, count, 500):
            ids = [job_id(tag, i) for i in range(start, min(count, start + 500))]
            await queue.addBulk([{"name": JOB_NAME, "data": payload(i), "opts": options(i)}
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


# Tables ---------------------------------------------------------------------------------------

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


# Sections -------------------------------------------------------------------------------------

def enqueue_once(run: Run, impl: str, mode: str, count: int) -> float:
    """Jobs stored per second; adds that failed are left out of the count (and reported)."""
    queue_name = f"e-{impl}-{mode}"
    tag = run.tag()
    if impl == "node":
        argv = ["node", str(NODE_DIR / "enqueue.js"), mode, str(count), queue_name, run.url, tag]
    else:
        argv = [sys.executable, str(BENCH_DIR / "py_enqueue.py"), mode, impl, str(count),
                queue_name, run.url, tag]
    out = subprocess.run(argv, env=base_env(run), capture_output=True, text=True, check=False,
                         cwd=ROOT, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    failed = int(result.get("failed", 0))
    if failed:
        run.failures[f"{impl} {mode}"] = max(run.failures.get(f"{impl} {mode}", 0), failed)
    return (count - failed) / result["seconds"]


def section_enqueue(run: Run, label: str = "enqueue") -> dict[str, dict[str, float]]:
    impls = ["node", "port", "slackq", "blocking"]
    count = int(3000 * run.scale)
    medians: dict[str, dict[str, float]] = {}
    for mode in ("sequential", "concurrent", "bulk"):
        samples: dict[str, list[float]] = defaultdict(list)
        for _ in range(run.reps):
            for impl in impls:
                samples[impl].append(enqueue_once(run, impl, mode, count))
            settle(run)
        medians[mode] = {impl: median(values) for impl, values in samples.items()}
    run.results[label] = medians
    run.print(f"### Enqueue ({count} jobs of 1.1 KB, jobs/s, median of {run.reps})")
    run.print()
    rows = [[mode, fmt(m["node"]), fmt(m["port"]), fmt(m["slackq"]), fmt(m["blocking"]),
             ratio(m["port"], m["node"]), ratio(m["slackq"], m["node"]),
             ratio(m["blocking"], m["node"])]
            for mode, m in medians.items()]
    table(run, ["add", "Node", "Python, port's client", "slackq Enqueuer (web process)",
                "blocking pool of 64", "port/Node", "Enqueuer/Node", "blocking/Node"], rows)
    for what, failed in run.failures.items():
        run.print(f"- {what}: {failed} of {count} adds failed (not stored) in one run")
    if run.failures:
        run.print()
    return medians


def section_drain(run: Run) -> None:
    impls = ["node", "port", "nofetch", "slackq", "dyno-1conn", "dyno"]
    medians: dict[int, dict[str, float]] = {}
    rss: dict[str, dict[str, int]] = {}
    for concurrency in (1, 10, 100):
        count = int((3000 if concurrency == 1 else 10000) * run.scale)
        single = dyno_shape(concurrency, usable_cpus())[0] == 1
        chosen = [i for i in impls if not (i.startswith("dyno") and single)
                  and not (i in ("nofetch", "dyno-1conn") and concurrency != 100)]
        samples: dict[str, list[float]] = defaultdict(list)
        busy: dict[str, list[int]] = defaultdict(list)
        with workers(run, chosen, concurrency) as started:
            if concurrency == 100:
                time.sleep(1.0)  # let start-up garbage settle before the idle reading
                rss = {impl: {"idle": w.rss_kb()} for impl, w in started.items()}
            for _ in range(run.reps):
                for impl, worker in started.items():
                    samples[impl].append(measure_drain(
                        run, worker, f"q-{impl}-{concurrency}", count, busy[impl]))
        settle(run)
        medians[concurrency] = {impl: median(values) for impl, values in samples.items()}
        if concurrency == 100:
            for impl, values in busy.items():
                rss[impl]["busy"] = max(values) if values else 0
    run.results["drain"] = medians
    run.results["rss_kb"] = rss
    processes = usable_cpus()
    run.print(f"### Drain, no-op processor (jobs/s, median of {run.reps}; the dyno runs "
              f"{processes} processes sharing the concurrency)")
    run.print()
    rows = []
    nan = float("nan")
    for concurrency, m in medians.items():
        dyno = m.get("dyno", m["slackq"])
        rows.append([str(concurrency), fmt(m["node"]), fmt(m["port"]), fmt(m.get("nofetch", nan)),
                     fmt(m["slackq"]), fmt(m.get("dyno-1conn", nan)), fmt(dyno),
                     ratio(m["port"], m["node"]), ratio(m["slackq"], m["node"]),
                     ratio(m.get("dyno-1conn", nan), m["node"]), ratio(dyno, m["node"])])
    table(run, ["concurrency per dyno", "Node", "port Worker",
                "slackq 1 proc, port's fetching + 1 connection", "slackq 1 proc",
                "slackq dyno, 1 connection/proc", "slackq dyno", "port/Node", "1 proc/Node",
                "dyno 1 conn/Node", "dyno/Node"], rows)
    run.print("### Memory (RSS, MB; busy = peak while draining at concurrency 100)")
    run.print()
    rows = [[impl, f"{v['idle'] / 1024:.1f}", f"{v.get('busy', 0) / 1024:.1f}"]
            for impl, v in rss.items()]
    table(run, ["worker", "idle", "busy"], rows)


def latency_probe(run: Run, queue_name: str, rate: float, seconds: float,
                  warmup: float) -> list[float]:
    """bench/node/latency.js: adds at `rate`/s (open loop), times each until `completed`.

    The probe is the same program for every worker under test, and a light one (Node), so that
    it perturbs the 2-core machine as little as possible.
    """
    argv = ["node", str(NODE_DIR / "latency.js"), run.url, queue_name, str(rate), str(seconds),
            str(warmup), run.tag()]
    out = subprocess.run(argv, env=base_env(run), capture_output=True, text=True, check=False,
                         cwd=ROOT, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"latency probe failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["lost"]:
        run.print(f"- {queue_name}: {result['lost']} jobs not completed 10 s after the last add")
    return [float(v) for v in result["latencies_ms"]]


def section_latency(run: Run) -> None:
    """Latency and CPU at a fixed 500 jobs/s; each worker `run.reps` times, workers interleaved.

    CPU is per job added (the probe adds rate * seconds jobs, the warm-up included), times the
    rate: the probe's start-up and tail, when no job arrives, do not dilute it.
    """
    rate, seconds, warmup = 500.0, max(3.0, 8.0 * run.scale), 1.0
    # One slackq process next to the dyno: at a trickle the dyno's second process costs CPU.
    impls = ["node", "port", "slackq", "dyno"]
    concurrency = 10
    jobs = int(rate * seconds)
    samples: dict[str, dict[str, list[float]]] = {impl: defaultdict(list) for impl in impls}
    for _ in range(run.reps):
        for impl in impls:
            with workers(run, [impl], concurrency) as started:
                worker = started[impl]
                time.sleep(0.5)
                cpu_before, server_before = worker.cpu_seconds(), _server_cpu(run)
                latencies = latency_probe(run, f"q-{impl}-{concurrency}", rate, seconds, warmup)
                cpu = (worker.cpu_seconds() - cpu_before) / jobs * rate * 100
                redis_cpu = (_server_cpu(run) - server_before) / jobs * rate * 100
            settle(run)
            for key, value in (("p50", percentile(latencies, 0.5)),
                               ("p99", percentile(latencies, 0.99)), ("cpu", cpu),
                               ("redis_cpu", redis_cpu), ("n", len(latencies))):
                samples[impl][key].append(value)
    results = {impl: {key: median(values) for key, values in by_key.items()}
               for impl, by_key in samples.items()}
    run.results["latency"] = results
    run.print(f"### End-to-end latency at {rate:.0f} jobs/s, {jobs} jobs in {seconds:.0f} s "
              f"(add -> `completed` event; the first {warmup:.0f} s untimed; worker concurrency "
              f"{concurrency} per dyno; median of {run.reps})")
    run.print()
    node = results["node"]
    processes, per_process = dyno_shape(concurrency, usable_cpus())
    labels = {"node": "Node", "port": "port Worker as shipped", "slackq": "slackq, 1 process",
              "dyno": f"slackq dyno ({processes} processes x {per_process})"}
    rows = [[labels[impl], f"{r['p50']:.2f}", f"{r['p99']:.2f}", ratio(r["p99"], node["p99"]),
             f"{r['cpu']:.0f}%", f"{r['redis_cpu']:.0f}%", str(int(r["n"]))]
            for impl, r in results.items()]
    table(run, ["worker", "p50 ms", "p99 ms", "p99/Node", "worker CPU at 500 jobs/s (of one core)",
                "Redis CPU", "jobs timed"], rows)


def _server_cpu(run: Run) -> float:
    from bench.common import cpu_seconds

    return cpu_seconds(run.server_pid)


def section_aof(run: Run) -> None:
    impls = ["node", "dyno"]
    count = int(10000 * run.scale)
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    client = run.sync()
    try:
        with workers(run, impls, 100) as started:
            for _ in range(run.reps):
                for aof in ("everysec", "off"):
                    client.config_set("appendonly", "no" if aof == "off" else "yes")
                    settle(run)
                    for impl, worker in started.items():
                        samples[(impl, aof)].append(
                            measure_drain(run, worker, f"q-{impl}-100", count, []))
                    for impl in ("node", "slackq"):
                        samples[(f"add-{impl}", aof)].append(
                            enqueue_once(run, impl, "concurrent", int(3000 * run.scale)))
        client.config_set("appendonly", "yes")
    finally:
        client.close()
    settle(run)
    m = {f"{k[0]}|{k[1]}": median(v) for k, v in samples.items()}
    run.results["aof"] = m
    run.print(f"### AOF everysec vs off (jobs/s, median of {run.reps})")
    run.print()
    rows = []
    for label, key in (("drain c=100, Node", "node"), ("drain c=100, slackq dyno", "dyno"),
                       ("add x100 concurrent, Node", "add-node"),
                       ("add x100 concurrent, slackq Enqueuer", "add-slackq")):
        on, off = m[f"{key}|everysec"], m[f"{key}|off"]
        rows.append([label, fmt(on), fmt(off), ratio(on, off)])
    table(run, ["", "AOF everysec", "AOF off", "everysec/off"], rows)



# Realistic drain (issue 18) ------------------------------------------------------------------

REALISTIC_CONCURRENCY = 50
# Pacing stays on (every Slack call still takes the limiter's script) at rates no drain reaches.
UNPACED = {"WORKER_RATE_PER_CHANNEL": "1000000", "WORKER_RATE_PER_TEAM": "1000000"}
PEERS = ("arq", "saq")


@dataclass
class Standin:
    """bench/slack_fast.py in its own process: `api` is the SLACK_API_URL to give workers."""

    process: Background
    base: str

    @property
    def api(self) -> str:
        return f"{self.base}/api/"

    def stats(self) -> dict[str, float]:
        with urllib.request.urlopen(f"{self.base}/_stats", timeout=5) as answer:
            return dict(json.load(answer))

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.base}/_reset", method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass


@contextlib.contextmanager
def slack_standin(run: Run) -> Iterator[Standin]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = Background([sys.executable, str(BENCH_DIR / "slack_fast.py"), str(port)],
                         base_env(run), run.workdir / "slack.log", "slack_ready").wait_ready()
    standin = Standin(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                standin.stats()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield standin
    finally:
        process.stop()


def realistic_worker(run: Run, impl: str, queue: str, slack: str) -> Background:
    """One worker of `impl` with 50 jobs in flight in all; `slack` is `-` for a no-op."""
    log = run.workdir / f"real-{impl}-{queue}.log"
    concurrency = str(REALISTIC_CONCURRENCY)
    if impl in PEERS:
        argv = [str(bench_venv_python()), str(BENCH_DIR / "py_peers.py"), "worker", impl, queue,
                concurrency, run.url, slack]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    if impl == "node":
        script = "worker.js" if slack == "-" else "worker_http.js"
        argv = ["node", str(NODE_DIR / script), queue, concurrency, run.url, slack]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    processes = 2 if impl == "dyno" else 1
    env = base_env(run, QUEUE_NAME=queue, WORKER_PROCESSES=str(processes),
                   WORKER_CONCURRENCY=str(REALISTIC_CONCURRENCY // processes),
                   SLACK_API_URL=slack, **UNPACED)
    # The real worker (`python -m worker`, the default handlers); the no-op: bench/py_worker.py.
    argv = ([sys.executable, str(BENCH_DIR / "py_worker.py"), "dyno"] if slack == "-"
            else [sys.executable, "-m", "worker"])
    return Background(argv, env, log, '"worker_started"', processes).wait_ready()


def peer_enqueue(run: Run, impl: str, queue: str, count: int) -> None:
    """Store `count` jobs for a peer, scheduled an hour ahead: `release` makes them due."""
    env = base_env(run, BENCH_PEER_PAYLOAD=json.dumps(realistic_payload("__ID__")))
    argv = [str(bench_venv_python()), str(BENCH_DIR / "py_peers.py"), "enqueue", impl, queue,
            str(count), run.url, str(time.time() + 3600), run.tag()]
    subprocess.run(argv, env=env, check=True, cwd=ROOT, timeout=300)


def peer_schedule_key(impl: str, queue: str) -> str:
    """The sorted set a peer keeps scheduled jobs in, scored by when they are due."""
    return queue if impl == "arq" else f"saq:{queue}:incomplete"


def release(run: Run, impl: str, queue: str) -> None:
    """Start the drain: resume the BullMQ queue, or make every scheduled peer job due now."""
    if impl not in PEERS:
        asyncio.run(resume(run.url, queue))
        return
    client = run.sync()
    try:
        key = peer_schedule_key(impl, queue)
        now = time.time() * (1000 if impl == "arq" else 1)
        members = client.zrange(key, 0, -1)
        for start in range(0, len(members), 1000):
            client.zadd(key, dict.fromkeys(members[start:start + 1000], now), xx=True)
    finally:
        client.close()


def peer_pending(client: redis.Redis, impl: str, queue: str) -> int:
    if impl == "arq":
        return int(client.zcard(queue))
    return int(client.zcard(f"saq:{queue}:incomplete"))


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in client.info("commandstats").items()}


def realistic_once(run: Run, impl: str, count: int, standin: Standin | None) -> dict[str, Any]:
    """One drain of `count` jobs: jobs/s, worker CPU µs per job, Redis commands per job."""
    queue = f"r-{impl}-{run.tag()}"
    slack = standin.api if standin else "-"
    worker = realistic_worker(run, impl, queue, slack)
    client = run.sync()
    try:
        if impl in PEERS:
            peer_enqueue(run, impl, queue, count)
        else:
            name = JOB_NAME if standin is None else "app_mention"
            asyncio.run(fill_paused_named(run.url, queue, run.tag(), count, name))
        if standin:
            standin.reset()
        time.sleep(0.3)  # let the worker go idle after start-up
        cpu, stats = worker.cpu_seconds(), commandstats(client)
        server_cpu = _server_cpu(run)
        slack_cpu = standin.process.cpu_seconds() if standin else 0.0
        started = time.time()
        release(run, impl, queue)
        deadline = started + 300
        while (peer_pending(client, impl, queue) if impl in PEERS else pending(client, queue)):
            if time.time() > deadline:
                raise RuntimeError(f"{impl} did not drain:\n{worker.log_path.read_text()[-2000:]}")
            time.sleep(0.005)
        ended = time.time()
        cpu = worker.cpu_seconds() - cpu
        server_cpu = _server_cpu(run) - server_cpu
        slack_cpu = (standin.process.cpu_seconds() - slack_cpu) if standin else 0.0
        after = commandstats(client)
    finally:
        client.close()
        # arq and saq may linger on SIGTERM; the drain is over, so do not wait for them long.
        worker.stop(grace=5 if impl in PEERS else 35)
    calls = {name: after[name] - stats.get(name, 0) for name in after}
    result: dict[str, Any] = {"cpu_us": cpu / count * 1e6, "redis_us": server_cpu / count * 1e6,
                              "slack_us": slack_cpu / count * 1e6,
                              "commands": {k: v / count for k, v in calls.items() if v}}
    if standin:
        posted = standin.stats()
        if posted["count"] != count:
            raise RuntimeError(f"{impl}: {posted['count']} posts for {count} jobs")
        # First post to last: the same clock for every worker, start-up and tail excluded.
        result["rate"] = (count - 1) / max(1e-9, posted["last"] - posted["first"])
    else:
        result["rate"] = count / (ended - started)
    settle(run)
    return result


async def fill_paused_named(url: str, queue_name: str, tag: str, count: int, name: str) -> None:
    queue = Queue(queue_name, {"connection": aioredis.Redis.from_url(url, decode_responses=True)})
    try:
        await queue.pause()
        for start in range(0, count, 500):
            ids = [job_id(tag, i) for i in range(start, min(count, start + 500))]
            await queue.addBulk([{"name": name, "data": realistic_payload(i), "opts": options(i)}
                                 for i in ids])
    finally:
        await queue.close()


def realistic_payload(event_id: str) -> dict[str, Any]:
    """bench.common's 1.1 KB `app_mention`, in a channel of its own (`C` + the event id).

    The channel limiter reserves a channel's calls one interval apart without burst, so jobs of
    one channel meet the pace whatever the rate (sub-millisecond collisions are deferred by 1
    ms): one channel per job keeps the pacing check on every call without pacing the drain.
    """
    data = payload(event_id)
    data["event"]["channel"] = f"C{event_id}"
    return data


def round_trips(commands: dict[str, float]) -> float:
    """Round trips per job of a BullMQ worker, Node's or slackq's.

    `INFO commandstats` also counts the commands scripts run, so round trips cannot be told from
    it in general. A BullMQ worker sends only scripts (`EVALSHA`/`EVAL`), the marker wait
    (`BZPOPMIN`) and, for slackq, one `MULTI`/`EXEC` per job carrying two scripts (the effect
    record's `EVAL` and `moveToFinished`'s `EVALSHA`, tests/test_worker_effect_lease.py): one
    round trip, so each transaction takes one of its two scripts off the count.
    """
    get = commands.get
    return get("evalsha", 0.0) + get("eval", 0.0) + get("bzpopmin", 0.0) - get("exec", 0.0)


def command_summary(commands: dict[str, float], limit: int = 6) -> str:
    """The `limit` most frequent commands per job (those run by scripts included)."""
    shown = sorted(((v, k) for k, v in commands.items() if v >= 0.05), reverse=True)[:limit]
    return ", ".join(f"{k} {v:.2f}" for v, k in shown)


REALISTIC_LABELS = {"slackq": "slackq, 1 process", "dyno": "slackq dyno (2 x 25)",
                    "node": "Node BullMQ", "arq": "arq, 1 process", "saq": "saq, 1 process"}


def section_realistic(run: Run) -> None:
    impls = ["node", "slackq", "dyno", "arq", "saq"]
    count = int(2000 * run.scale)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    load = os.getloadavg()
    with slack_standin(run) as standin:
        for variant, impls_of, slack in (("http", impls, standin),
                                         ("noop", ["node", "slackq", "arq", "saq"], None)):
            samples: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for _ in range(run.reps):
                for impl in impls_of:
                    samples[impl].append(realistic_once(run, impl, count, slack))
            results[variant] = {impl: realistic_median(s) for impl, s in samples.items()}
    load_after = os.getloadavg()
    run.results["realistic"] = {"results": results, "load": [load, load_after]}
    run.print(f"### Realistic drain: {count} `app_mention` jobs, concurrency 50, one threaded "
              f"`chat.postMessage` each to a loopback Slack (bench/slack_fast.py); median of "
              f"{run.reps}; load average {load[0]:.2f} before, {load_after[0]:.2f} after")
    run.print()
    realistic_table(run, results["http"])
    run.print(f"### Same drain, no-op processor ({count} jobs, concurrency 50; slackq: "
              f"bench/py_worker.py, no Slack call, so no pacing or effect record)")
    run.print()
    realistic_table(run, results["noop"])


def realistic_median(samples: list[dict[str, Any]]) -> dict[str, Any]:
    names = {name for s in samples for name in s["commands"]}
    return {"rate": median([s["rate"] for s in samples]),
            "cpu_us": median([s["cpu_us"] for s in samples]),
            "redis_us": median([s["redis_us"] for s in samples]),
            "slack_us": median([s["slack_us"] for s in samples]),
            "commands": {n: median([s["commands"].get(n, 0.0) for s in samples]) for n in names}}


def realistic_table(run: Run, results: dict[str, dict[str, Any]]) -> None:
    node, arq, saq = results["node"], results["arq"], results["saq"]
    rows = []
    for impl, r in results.items():
        trips = "-" if impl in PEERS else f"{round_trips(r['commands']):.2f}"
        rows.append([REALISTIC_LABELS[impl], fmt(r["rate"]), fmt(r["cpu_us"]),
                     fmt(r["redis_us"]), fmt(r["slack_us"]), trips,
                     f"{sum(r['commands'].values()):.1f}", command_summary(r["commands"]),
                     ratio(r["rate"], node["rate"]), ratio(r["rate"], arq["rate"]),
                     ratio(r["rate"], saq["rate"]), ratio(r["cpu_us"], node["cpu_us"]),
                     ratio(r["cpu_us"], arq["cpu_us"]), ratio(r["cpu_us"], saq["cpu_us"])])
    table(run, ["worker", "jobs/s", "worker CPU µs/job", "Redis CPU µs/job",
                "Slack stand-in CPU µs/job", "round trips/job",
                "Redis commands/job (scripts' included)", "most frequent",
                "rate/Node", "rate/arq", "rate/saq", "CPU/Node", "CPU/arq", "CPU/saq"], rows)


SECTIONS: dict[str, Callable[[Run], Any]] = {
    "enqueue": section_enqueue, "drain": section_drain, "latency": section_latency,
    "aof": section_aof, "realistic": section_realistic,
}


def describe_machine(run: Run) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown CPU")
    client = run.sync()
    version = client.info("server").get("redis_version")
    client.close()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    run.print(f"Machine: {usable_cpus()} usable CPUs ({cpu}), Redis {version} on loopback "
              f"(project redis.conf), Python {sys.version.split()[0]}, Node {node}; "
              f"load average at start {load[0]:.2f}.")
    run.print()
    run.results["machine"] = {"cpus": usable_cpus(), "cpu": cpu, "redis": version,
                              "python": sys.version.split()[0], "node": node, "load": load}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply job counts")
    default = ",".join(name for name in SECTIONS if name != "realistic")
    parser.add_argument("--only", "--sections", default=default,
                        help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all "
                             "but realistic, which needs .venv-bench)")
    args = parser.parse_args(argv)
    ensure_node_modules()
    REPORTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        assert server.process is not None
        run = Run(url=server.url, server_pid=server.process.pid, workdir=Path(tmp),
                  reps=args.reps, scale=args.scale)
        started = time.perf_counter()
        try:
            describe_machine(run)
            for name in args.only.split(","):
                SECTIONS[name](run)
        finally:
            server.kill()
        run.print(f"(bench took {time.perf_counter() - started:.0f} s)")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    (REPORTS / f"bench-{stamp}.json").write_text(json.dumps(run.results, indent=2))
    (REPORTS / f"bench-{stamp}.md").write_text("\n".join(run.lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
