"""Realistic drain (issue 18): Node BullMQ, slackq (one process and the dyno), arq and saq
draining `app_mention` jobs with one Slack call each, then with a no-op."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from bench.common import BENCH_DIR, JOB_NAME, NODE_DIR, Background, median, payload
from bench.sections.core import (
    ROOT,
    Run,
    base_env,
    base_label,
    fill_paused,
    fmt,
    pending,
    ratio,
    resume,
    server_cpu,
    settle,
    table,
)
from bench.venv import bench_venv_python

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
    log = run.workdir / f"real-{impl}-{queue}.log".replace("@", "-")
    concurrency = str(REALISTIC_CONCURRENCY)
    if impl in PEERS:
        argv = [str(bench_venv_python()), str(BENCH_DIR / "py_peers.py"), "worker", impl, queue,
                concurrency, run.url, slack]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    if impl == "node":
        script = "worker.js" if slack == "-" else "worker_http.js"
        argv = ["node", str(NODE_DIR / script), queue, concurrency, run.url, slack]
        return Background(argv, base_env(run), log, "worker_started").wait_ready()
    processes = 2 if impl.startswith("dyno") else 1
    env = base_env(run, QUEUE_NAME=queue, WORKER_PROCESSES=str(processes),
                   WORKER_CONCURRENCY=str(REALISTIC_CONCURRENCY // processes),
                   SLACK_API_URL=slack, **UNPACED)
    # The real worker (`python -m worker`, the default handlers); the no-op: bench/py_worker.py.
    tree, python = run.tree(impl)
    argv = ([python, str(tree / "bench" / "py_worker.py"), "dyno"] if slack == "-"
            else [python, "-m", "worker"])
    return Background(argv, env, log, '"worker_started"', processes, cwd=tree).wait_ready()


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
    queue = f"r-{impl.replace('@', '-')}-{run.tag()}"
    slack = standin.api if standin else "-"
    worker = realistic_worker(run, impl, queue, slack)
    client = run.sync()
    try:
        if impl in PEERS:
            peer_enqueue(run, impl, queue, count)
        else:
            name = JOB_NAME if standin is None else "app_mention"
            asyncio.run(fill_paused(run.url, queue, run.tag(), count, name=name,
                                    data=realistic_payload))
        if standin:
            standin.reset()
        time.sleep(0.3)  # let the worker go idle after start-up
        cpu, stats = worker.cpu_seconds(), commandstats(client)
        redis_cpu = server_cpu(run)
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
        redis_cpu = server_cpu(run) - redis_cpu
        slack_cpu = (standin.process.cpu_seconds() - slack_cpu) if standin else 0.0
        after = commandstats(client)
    finally:
        client.close()
        # arq and saq may linger on SIGTERM; the drain is over, so do not wait for them long.
        worker.stop(grace=5 if impl in PEERS else 35)
    calls = {name: after[name] - stats.get(name, 0) for name in after}
    result: dict[str, Any] = {"cpu_us": cpu / count * 1e6, "redis_us": redis_cpu / count * 1e6,
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
    impls = run.with_base(["node", "slackq", "dyno", "arq", "saq"], "slackq")
    count = int(2000 * run.scale)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    load = os.getloadavg()
    with slack_standin(run) as standin:
        for variant, impls_of, slack in (("http", impls, standin),
                                         ("noop", run.with_base(["node", "slackq", "arq", "saq"],
                                                                "slackq"), None)):
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
        label = base_label(impl, REALISTIC_LABELS[impl.removesuffix("@base")])
        rows.append([label, fmt(r["rate"]), fmt(r["cpu_us"]),
                     fmt(r["redis_us"]), fmt(r["slack_us"]), trips,
                     f"{sum(r['commands'].values()):.1f}", command_summary(r["commands"]),
                     ratio(r["rate"], node["rate"]), ratio(r["rate"], arq["rate"]),
                     ratio(r["rate"], saq["rate"]), ratio(r["cpu_us"], node["cpu_us"]),
                     ratio(r["cpu_us"], arq["cpu_us"]), ratio(r["cpu_us"], saq["cpu_us"])])
    table(run, ["worker", "jobs/s", "worker CPU µs/job", "Redis CPU µs/job",
                "Slack stand-in CPU µs/job", "round trips/job",
                "Redis commands/job (scripts' included)", "most frequent",
                "rate/Node", "rate/arq", "rate/saq", "CPU/Node", "CPU/arq", "CPU/saq"], rows)
