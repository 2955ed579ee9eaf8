"""Ack latency of slackq's webhook vs Bolt for Python's AsyncApp, side by side, open loop.

    python bench/webhook.py [--rates 500,1000,...] [--seconds 3]

Both servers run as the Procfile runs the web process (`python -m producers`: uvicorn, one
process) on 127.0.0.1; slackq stores every event in a real redis-server started with the
project's redis.conf (AOF everysec) before it answers, Bolt acknowledges in process. The
generator sends signed `app_mention` events, each with a fresh event_id, at a fixed rate over
keep-alive connections. Latency counts from each request's *scheduled* send time (open loop), so
a server that falls behind pays for the queue it builds. Per rate, each server gets its turn
back to back. Prints p50/p95/p99 per rate and the highest rate with p99 under 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slackq.embedded import RedisProcess, free_port  # noqa: E402 - after the path set-up
from tests.slack_requests import app_mention_envelope, encode, signed_headers  # noqa: E402

SECRET = "bench-signing-secret-0123456789abcdef"
P99_TARGET_MS = 5.0
MAX_CONNECTIONS = 256


@dataclass
class Result:
    rate: int
    latencies_ms: list[float]
    errors: int
    cpu_us_per_request: float = float("nan")

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def request_bytes(port: int, event_id: str) -> bytes:
    body = encode(app_mention_envelope(event_id))
    headers = signed_headers(body, secret=SECRET)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Connections:
    """Keep-alive HTTP/1.1 connections, opened on demand up to MAX_CONNECTIONS."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        self.freed = asyncio.Condition()

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self.freed:
            while not self.idle and self.opened >= MAX_CONNECTIONS:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        async with self.freed:
            self.idle.append(conn)
            self.freed.notify()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], raw: bytes) -> int:
    reader, writer = conn
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def run_rate(port: int, rate: int, seconds: float, tag: str) -> Result:
    """Send rate*seconds signed events on schedule; latency from each scheduled time."""
    count = int(rate * seconds)
    raws = [request_bytes(port, f"Ev{tag}{rate}N{i:07d}") for i in range(count)]
    conns = Connections(port)
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one(raw: bytes, scheduled: float) -> None:
        nonlocal errors
        conn = await conns.acquire()
        try:
            status = await exchange(conn, raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn[1].close()
            conns.opened -= 1
            return
        latencies.append((loop.time() - scheduled) * 1000)
        if status != 200:
            errors += 1
        await conns.release(conn)

    start = loop.time() + 0.05
    tasks = []
    for i, raw in enumerate(raws):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(raw, scheduled)))
    await asyncio.gather(*tasks)
    conns.close()
    return Result(rate, latencies, errors)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, proc)
            yield proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            httpx.post(f"http://127.0.0.1:{port}/slack/events", content=b"{}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port}")


def table(rates: list[int], results: dict[str, dict[int, Result]]) -> str:
    names = list(results)
    header = "| events/s | " + " | ".join(
        f"{n} p50 | {n} p95 | {n} p99 | {n} non-200 | {n} CPU us/req" for n in names) + " |"
    lines = [header, "|" + "---|" * (1 + 5 * len(names))]
    for rate in rates:
        cells = []
        for name in names:
            r = results[name][rate]
            cells += [f"{r.percentile(0.50):.2f}", f"{r.percentile(0.95):.2f}",
                      f"{r.percentile(0.99):.2f}", str(r.errors), f"{r.cpu_us_per_request:.0f}"]
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    for name in names:
        ok = [rate for rate in rates
              if results[name][rate].percentile(0.99) < P99_TARGET_MS and not
              results[name][rate].errors]
        best = max(ok) if ok else "none"
        lines.append(f"\n{name}: highest rate with p99 < {P99_TARGET_MS:g} ms and no error: {best}")
    return "\n".join(lines)


async def measure(rates: list[int], seconds: float, servers: dict[str, tuple[int, int]],
                  ) -> dict[str, dict[int, Result]]:
    """Each rate on each server in turn; `servers` maps a name to (port, pid)."""
    results: dict[str, dict[int, Result]] = {name: {} for name in servers}
    for name, (port, _) in servers.items():  # warm-up: connections, Lua scripts, caches
        await run_rate(port, 200, 1.0, f"W{name[0]}")
    for rate in rates:
        for name, (port, pid) in servers.items():
            cpu_before = cpu_seconds(pid)
            result = await run_rate(port, rate, seconds, name[0].upper())
            result.cpu_us_per_request = (cpu_seconds(pid) - cpu_before) / (rate * seconds) * 1e6
            results[name][rate] = result
            print(f"  {name:>6} {rate:>5}/s  p50 {result.percentile(0.5):6.2f}  "
                  f"p99 {result.percentile(0.99):7.2f} ms  non-200 {result.errors}  "
                  f"server CPU {result.cpu_us_per_request:4.0f} us/request",
                  file=sys.stderr, flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="500,1000,1500,2000,2500,3000,3500")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--only", choices=["slackq", "bolt"], help="measure one server only")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        work = Path(tmp)
        redis_server = RedisProcess(data_dir=work / "redis")
        redis_server.start()
        slackq_port, bolt_port = free_port(), free_port()
        env = {**os.environ, "SLACK_SIGNING_SECRET": SECRET, "REDIS_URL": redis_server.url,
               "LOG_FORMAT": "json", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        try:
            with server([sys.executable, "-m", "producers"], {**env, "PORT": str(slackq_port)},
                        slackq_port, work / "slackq.log") as slackq_pid, \
                    server([sys.executable, "bench/bolt_app.py"], {**env, "PORT": str(bolt_port)},
                           bolt_port, work / "bolt.log") as bolt_pid:
                servers = {"slackq": (slackq_port, slackq_pid), "bolt": (bolt_port, bolt_pid)}
                if args.only:
                    servers = {args.only: servers[args.only]}
                results = asyncio.run(measure(rates, args.seconds, servers))
            stored = redis_server_jobs(redis_server)
        finally:
            redis_server.stop()
    print(f"\nack latency in ms from the scheduled send time; {args.seconds:g} s per rate; "
          f"{os.cpu_count()} CPUs; slackq stored {stored} jobs\n")
    print(table(rates, results))
    return 0


def redis_server_jobs(redis_server: RedisProcess) -> int:
    import redis

    with redis.Redis(port=redis_server.port) as client:
        return int(client.llen("bull:slack-events:wait"))


if __name__ == "__main__":
    sys.exit(main())
