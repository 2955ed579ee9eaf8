"""Acknowledgement latency of each ACK_DURABILITY mode, side by side in one run.

    python bench/ack_modes.py [--count 400] [--reps 3] [--server redis|valkey|PATH]
                              [--appendfsync everysec|always]

Starts a primary and two replicas (harness.topology, no sentinels; the project's redis.conf,
AOF `everysec`) and times the webhook's `Enqueuer.add` (store the job, then confirm it as the
mode asks) for each mode: COUNT adds one at a time, then COUNT with 16 in flight. Modes take
turns within each of --reps rounds, so drift hits them alike. The table shows p50 and p99 in
milliseconds, their ratio to `memory`, and how many adds were not confirmed within
ACK_TIMEOUT_MS (1500 ms here; they would have been 503s). `fsync` modes need WAITAOF (Redis 7.2
or Valkey): on an older server they are reported as not run. `fsync+replicas:N` waits ~1 s per
confirmation (replicas report their fsync once a second): it runs COUNT / 10 adds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

from bench.common import median, percentile  # noqa: E402
from harness.servers import binary_version, resolve_binary  # noqa: E402
from harness.topology import SentinelTopology  # noqa: E402
from producers.enqueue import Enqueuer  # noqa: E402
from producers.jobs import SlackJob  # noqa: E402
from slackq.errors import RedisUnavailable  # noqa: E402
from slackq.settings import Settings  # noqa: E402

MODES = ("memory", "replicas:1", "replicas:2", "fsync", "fsync+replicas:1")
IN_FLIGHT = 16
ACK_TIMEOUT_MS = 1500


async def timed_add(enqueuer: Enqueuer, job: SlackJob) -> float | None:
    started = time.perf_counter()
    try:
        await enqueuer.add(job)
    except RedisUnavailable:
        return None
    return (time.perf_counter() - started) * 1000


async def run_mode(url: str, mode: str, tag: str, count: int) -> dict[str, list[float | None]]:
    settings = Settings(redis_url=url, slack_signing_secret="bench", ack_durability=mode,
                        ack_timeout_ms=ACK_TIMEOUT_MS, log_level="error")
    enqueuer = Enqueuer(settings)
    jobs = [SlackJob("bench_noop", {"event_id": f"Ev{tag}x{i:06d}"}, f"Ev{tag}x{i:06d}")
            for i in range(2 * count)]
    try:
        serial = [await timed_add(enqueuer, job) for job in jobs[:count]]
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def one(job: SlackJob) -> float | None:
            async with slots:
                return await timed_add(enqueuer, job)

        concurrent = list(await asyncio.gather(*(one(job) for job in jobs[count:])))
    finally:
        await enqueuer.close()
    return {"1": serial, str(IN_FLIGHT): concurrent}


def waitaof_available(version: dict[str, str]) -> bool:
    numbers = tuple(int(part) for part in version["version"].split(".")[:2])
    return version["server"] == "valkey" or numbers >= (7, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--server", default=None, help="redis, valkey or a path")
    parser.add_argument("--appendfsync", choices=("everysec", "always"), default="everysec",
                        help="fsync modes need always in production (docs/high-availability.md)")
    args = parser.parse_args()
    binary = resolve_binary(args.server)
    version = binary_version(binary)
    modes = [mode for mode in MODES if waitaof_available(version) or "fsync" not in mode]
    samples: dict[tuple[str, str], list[float | None]] = {}
    with tempfile.TemporaryDirectory() as work:
        topology = SentinelTopology(Path(work), sentinels=0, binary=binary,
                                    overrides={"appendfsync": args.appendfsync}).start()
        try:
            url = topology.nodes[0].url
            for rep in range(args.reps):
                for index, mode in enumerate(modes):
                    count = max(10, args.count // 10) if "+" in mode else args.count
                    result = asyncio.run(run_mode(url, mode, f"{rep}m{index}", count))
                    for flight, values in result.items():
                        samples.setdefault((mode, flight), []).extend(values)
        finally:
            topology.stop()
    print(f"{version['server']} {version['version']}, primary + 2 replicas on loopback, "
          f"appendfsync {args.appendfsync}; {args.reps} x {args.count} adds per mode and "
          f"concurrency ({max(10, args.count // 10)} for fsync+replicas)\n")
    print("| mode | in flight | p50 ms | p99 ms | p50 / memory | p99 / memory | not confirmed |")
    print("|---|---|---|---|---|---|---|")
    for flight in ("1", str(IN_FLIGHT)):
        base = [v for v in samples[("memory", flight)] if v is not None]
        base50, base99 = median(base), percentile(base, 0.99)
        for mode in MODES:
            if (mode, flight) not in samples:
                print(f"| {mode} | {flight} | not run: no WAITAOF before Redis 7.2 | | | | |")
                continue
            values = samples[(mode, flight)]
            ok = [v for v in values if v is not None]
            p50, p99 = median(ok), percentile(ok, 0.99)
            print(f"| {mode} | {flight} | {p50:.2f} | {p99:.2f} | {p50 / base50:.2f} | "
                  f"{p99 / base99:.2f} | {len(values) - len(ok)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
