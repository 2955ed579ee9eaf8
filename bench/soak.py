"""Redis bytes per event under ordinary traffic: the real web and worker processes for minutes.

    python bench/soak.py [--rate 100] [--minutes 2] [--fail-percent 2]

Starts a redis-server with the project's redis.conf, the Slack stand-in, and the Procfile's
`web` and `worker` processes (one worker process, pacing off), then sends signed `app_mention`
events (a fresh event_id each, a channel of their own) at `--rate` per second for `--minutes`.
`--fail-percent` of them go to channels where the stand-in answers HTTP 500 every time, so
those jobs use up their attempts and stay failed, as under a Slack incident.

Afterwards (queue drained) it reports Redis `used_memory` growth per event, and what each kind
of key holds: SCAN + MEMORY USAGE per key class (job hashes by state, dedup keys, effect
records, the events stream, slackq's counters). Memory grows linearly until retention expires
(dedup keys after JOB_DEDUPLICATION_TTL_MS, failed jobs after JOB_KEEP_FAILED_SECONDS or
JOB_KEEP_FAILED_COUNT, ...): the steady state at a rate is each class's bytes per item times
the items it keeps at that rate, which the script projects, with the highest rate the shipped
`maxmemory 450mb` sustains. Events acknowledged, replies posted (each exactly once?) and
non-200 answers are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

import httpx  # noqa: E402
import redis  # noqa: E402

from bench.common import Background, start_redis  # noqa: E402
from harness.slack_standin import Call, FakeSlack, Scripted, server_error  # noqa: E402
from slackq.embedded import free_port  # noqa: E402
from slackq.settings import Settings  # noqa: E402
from tests.slack_requests import app_mention_envelope, encode, signed_headers  # noqa: E402

SECRET = "soak-signing-secret-0123456789abcdef"
TOKEN = "xoxb-fake"
MAXMEMORY = 450 * 1024 * 1024
FAILING = "CFAIL"
QUEUE_STRUCTURES = frozenset({"meta", "id", "wait", "active", "completed", "failed", "delayed",
                              "marker", "paused", "prioritized", "stalled", "pc", "limiter",
                              "stalled-check", "events"})


class FailingSlack(FakeSlack):
    """The stand-in, answering HTTP 500 to every post into a channel named `CFAIL…`."""

    def _answer(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> Scripted:
        if str(args.get("channel", "")).startswith(FAILING):
            with self._lock:
                self.calls.append(Call(method, args, {}, time.time()))
            return server_error(500)
        return super()._answer(method, args, headers)


async def send(port: int, rate: int, seconds: float, fail_percent: float) -> Counter[int]:
    """Send rate*seconds signed events on schedule; count the answers by status."""
    statuses: Counter[int] = Counter()
    total = int(rate * seconds)
    fail_every = int(100 / fail_percent) if fail_percent > 0 else 0
    started = time.monotonic()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=10) as client:
        async def one(n: int) -> None:
            failing = fail_every and n % fail_every == 0
            channel = f"{FAILING}{n:07d}" if failing else f"C{n:08d}"
            body = encode(app_mention_envelope(f"EvSOAK{n:08d}", channel=channel,
                                               ts=f"{1_700_000_000 + n}.000100"))
            try:
                response = await client.post("/slack/events", content=body,
                                             headers=signed_headers(body, secret=SECRET))
                statuses[response.status_code] += 1
            except httpx.HTTPError:
                statuses[0] += 1

        # At most 64 requests in flight: a sender that falls behind its schedule (a busy
        # machine) catches up without piling up thousands of waiting tasks.
        slots = asyncio.Semaphore(64)
        tasks = set()
        for n in range(total):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            task = asyncio.create_task(one(n))
            tasks.add(task)
            task.add_done_callback(lambda done: (tasks.discard(done), slots.release()))
        await asyncio.gather(*tasks)
        late = time.monotonic() - started - seconds
        if late > 1:
            print(f"(the sender finished {late:.0f} s behind its schedule: a busy machine)")
    return statuses


@dataclass
class KeyClass:
    items: int = 0
    bytes: int = 0


def classify(key: str, prefix: str, queue: str, states: dict[str, str]) -> str:
    base = f"{prefix}:{queue}:"
    effects = f"{prefix}:slackq:{queue}:effects:"
    if key.startswith(effects) and not key.endswith((":lease", ":possible-duplicates")):
        return "effect records (slackq)"  # a key per event, kept 24 h (before they moved)
    if key.startswith(f"{prefix}:slackq:"):
        return "slackq counters/pacing"
    if key.startswith(f"{base}de:"):
        return "dedup keys"
    if key == f"{base}events":
        return "events stream"
    rest = key[len(base):] if key.startswith(base) else ""
    if rest and ":" not in rest and rest not in QUEUE_STRUCTURES:
        return f"job hashes ({states.get(rest, 'other')})"
    return "queue structures"


def key_classes(client: redis.Redis, prefix: str, queue: str) -> dict[str, KeyClass]:
    states = {job_id: state for state in ("completed", "failed")
              for job_id in client.zrange(f"{prefix}:{queue}:{state}", 0, -1)}
    classes: dict[str, KeyClass] = defaultdict(KeyClass)
    for key in client.scan_iter(count=1000):
        usage = client.memory_usage(key, samples=0) or 0
        entry = classes[classify(key, prefix, queue, states)]
        entry.items += 1
        entry.bytes += int(usage)
    return dict(classes)


def retained(name: str, rate: float, fail_share: float, settings: Settings) -> float | None:
    """Items of class `name` kept at steady state at `rate` events/s (None: not per event)."""
    failed_count = getattr(settings, "job_keep_failed_count", None)
    if name == "dedup keys":
        return rate * settings.job_deduplication_ttl_ms / 1000
    if name == "effect records (slackq)":  # 24 h records, one per event, before they moved
        return rate * 86_400
    if name == "job hashes (completed)":
        return min(settings.job_keep_completed_count,
                   rate * settings.job_keep_completed_seconds)
    if name == "job hashes (failed)":
        by_age = rate * fail_share * settings.job_keep_failed_seconds
        return by_age if failed_count is None else min(failed_count, by_age)
    return None  # the events stream (capped by BullMQ's maxLenEvents) and queue structures


def steady_bytes(classes: dict[str, KeyClass], rate: float, fail_share: float,
                 settings: Settings) -> float:
    """Redis bytes these key classes hold at steady state at `rate` events/s."""
    total = 0.0
    for name, entry in classes.items():
        kept = retained(name, rate, fail_share, settings)
        total += entry.bytes if kept is None else kept * entry.bytes / max(entry.items, 1)
    return total


def report(classes: dict[str, KeyClass], events: int, grown: int, rate: float,
           fail_share: float, settings: Settings) -> None:
    print(f"\nused_memory grew {grown / 1e6:.2f} MB for {events} events: "
          f"{grown / max(events, 1):.0f} B per event over the run")
    print("\n| key class | items | bytes/item | kept at steady state per 1 event/s |")
    print("|---|---|---|---|")
    for name, entry in sorted(classes.items()):
        each = entry.bytes / max(entry.items, 1)
        kept1 = retained(name, 1.0, fail_share, settings)
        shown = "(fixed)" if kept1 is None else f"{kept1 * each / 1e6:.3f} MB"
        print(f"| {name} | {entry.items} | {each:.0f} | {shown} |")
    for probe in sorted({100, 200, int(rate)}):
        total = steady_bytes(classes, probe, fail_share, settings)
        print(f"steady state at {probe} events/s: {total / 1e6:.0f} MB "
              f"(maxmemory 450 MiB = {MAXMEMORY / 1e6:.0f} MB)")
    sustained = max((r for r in range(1, 5001)
                     if steady_bytes(classes, r, fail_share, settings) < 0.8 * MAXMEMORY),
                    default=0)
    print(f"highest rate held under 80 % of maxmemory at steady state: ~{sustained} events/s")


def drained(client: redis.Redis, prefix: str, queue: str) -> bool:
    waiting = client.llen(f"{prefix}:{queue}:wait") + client.llen(f"{prefix}:{queue}:active")
    return waiting + client.zcard(f"{prefix}:{queue}:delayed") == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--fail-percent", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slackq-soak-"))
    server = start_redis(work / "redis")
    slack = FailingSlack().start()
    port = free_port()
    env = {**os.environ, "REDIS_URL": server.url, "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_BOT_TOKEN": TOKEN, "SLACK_API_URL": slack.base_url, "PORT": str(port),
           "LOG_LEVEL": "warning", "LOG_FORMAT": "json", "WORKER_PROCESSES": "1",
           "WORKER_RATE_PER_CHANNEL": "0", "WORKER_RATE_PER_TEAM": "0"}
    web = Background([sys.executable, "-m", "producers"], env, work / "web.log", "")
    worker = Background([sys.executable, "-m", "worker"], env, work / "worker.log", "")
    settings = Settings(redis_url=server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        _wait_http(port)
        time.sleep(1.0)  # the worker's start-up (its log is at warning level: no marker)
        before = int(client.info("memory")["used_memory"])
        statuses = asyncio.run(send(port, args.rate, args.minutes * 60, args.fail_percent))
        deadline = time.monotonic() + 300
        while not drained(client, settings.queue_prefix, settings.queue_name):
            if time.monotonic() > deadline:
                print("the queue did not drain within 5 minutes")
                break
            time.sleep(0.5)
        grown = int(client.info("memory")["used_memory"]) - before
        events = statuses[200]
        posts = Counter(str(c.args.get("channel")) for c in slack.calls_to("chat.postMessage")
                        if not str(c.args.get("channel")).startswith(FAILING))
        print(f"{args.rate} events/s for {args.minutes} min: {sum(statuses.values())} sent, "
              f"{events} answered 200, {sum(statuses.values()) - events} other; "
              f"{len(posts)} replied, {sum(1 for n in posts.values() if n > 1)} replied twice")
        classes = key_classes(client, settings.queue_prefix, settings.queue_name)
        report(classes, events, grown, args.rate, args.fail_percent / 100, settings)
    finally:
        client.close()
        web.stop()
        worker.stop()
        slack.stop()
        server.kill()
    return 0


def _wait_http(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the web process did not answer /health")


if __name__ == "__main__":
    sys.exit(main())
