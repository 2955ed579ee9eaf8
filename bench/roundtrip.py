"""CPU per Redis round trip, Python clients next to ioredis, same Redis, same run.

    python bench/roundtrip.py [--count 6000] [--reps 3]

Every BullMQ step (fetch, complete, wait for the marker, add) is one script round trip, so the
client's CPU per round trip sets a floor under a worker's CPU per job and a webhook's per
request. Each client runs COUNT `EVALSHA` calls of a one-key script, 1 and 10 in flight, on
uvloop (as slackq's processes do); the table shows CPU microseconds per call (medians of
--reps) and the ratio to ioredis (Node BullMQ's client, from tests/node's lock file):

* redis-py with `single_connection_client=True` (the port's own connection);
* redis-py over its `BlockingConnectionPool` (slackq's worker pool before `slackq/pool.py`);
* redis-py over slackq's `LeanConnectionPool` (hiredis packing, lean lending).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

import redis.asyncio as aioredis  # noqa: E402
import uvloop  # noqa: E402

from bench.common import NODE_DIR, NODE_MODULES_DIR, ensure_node_modules, median, start_redis  # noqa: E402
from slackq.pool import lean_client  # noqa: E402

CLIENTS: dict[str, Callable[[str], aioredis.Redis]] = {
    "redis-py, single connection (the port's)": lambda url: aioredis.Redis.from_url(
        url, single_connection_client=True),
    "redis-py, BlockingConnectionPool": lambda url: aioredis.Redis.from_pool(
        aioredis.BlockingConnectionPool.from_url(url, max_connections=11, timeout=None)),
    "redis-py, slackq LeanConnectionPool": lambda url: lean_client(url, 11),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def python_run(make: Callable[[str], aioredis.Redis], url: str, count: int,
                     concurrency: int) -> float:
    client = make(url)
    try:
        await client.set("rt:key", "x" * 100)
        sha = await client.script_load("return redis.call('GET', KEYS[1])")

        async def calls(n: int) -> None:
            for _ in range(n):
                await client.evalsha(sha, 1, "rt:key")

        await calls(500)  # warm-up
        before = cpu_seconds()
        await asyncio.gather(*(calls(count // concurrency) for _ in range(concurrency)))
        return (cpu_seconds() - before) / count * 1e6
    finally:
        await client.aclose()


def node_run(url: str, count: int, concurrency: int) -> float:
    out = subprocess.run(["node", str(NODE_DIR / "roundtrip.js"), url, str(count),
                          str(concurrency)], capture_output=True, text=True, check=True,
                         timeout=300, env={"NODE_PATH": str(NODE_MODULES_DIR / "node_modules"),
                                           "PATH": "/usr/local/bin:/usr/bin:/bin"})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["cpu_us_per_call"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ensure_node_modules()
    samples: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        server = start_redis(Path(tmp) / "redis")
        try:
            for _ in range(args.reps):
                for concurrency in (1, 10):
                    samples.setdefault(("ioredis", concurrency), []).append(
                        node_run(server.url, args.count, concurrency))
                    for name, make in CLIENTS.items():
                        samples.setdefault((name, concurrency), []).append(uvloop.run(
                            python_run(make, server.url, args.count, concurrency)))
        finally:
            server.kill()
    print(f"CPU per EVALSHA round trip (us, median of {args.reps} runs of {args.count} calls)\n")
    print("| client | 1 in flight | 10 in flight | / ioredis (1) | / ioredis (10) |")
    print("|---|---|---|---|---|")
    names = ["ioredis", *CLIENTS]
    for name in names:
        one, ten = median(samples[(name, 1)]), median(samples[(name, 10)])
        base_one, base_ten = median(samples[("ioredis", 1)]), median(samples[("ioredis", 10)])
        print(f"| {name} | {one:.0f} | {ten:.0f} | {one / base_one:.2f} | {ten / base_ten:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
