"""Ack latency of slackq's webhook, a bare store-before-ack floor and Bolt, side by side.

    python bench/webhook.py [--rates 250,500,...] [--seconds 3] [--reps 3] [--servers ...]

Three servers, each served by uvicorn in its own process on 127.0.0.1: slackq as the Procfile
runs the web process (`python -m producers`), storing every event in a real redis-server
started with the project's redis.conf (AOF everysec) before it answers; the *store floor*
(bench/store_floor_app.py: bare ASGI, `hmac` check, the port's `Queue.add` of the event, then
200; no validation, log line or metrics), the least a BullMQ-compatible "200 means stored"
webhook does; and Bolt for Python's AsyncApp, which acknowledges in
process without I/O. The generator (bench/node/webhook_load.js: Node, so that it takes little of
a 2-core machine) sends signed `app_mention` events, each with a fresh event_id, at a fixed rate
over keep-alive connections. Latency counts from each request's *scheduled* send time (open
loop), so a server that falls behind pays for the queue it builds. Each rate runs --reps times,
the servers taking turns; the table shows the median of the runs' p50/p95/p99 and the highest
rate with p99 under 5 ms. The script fails if a storing server's 200s and stored events differ.

`--base DIR` also runs the web process of another checkout (e.g. `git archive main | tar -x -C
DIR`) as `base`, with this checkout's Python and dependencies, taking turns with the others: a
change is measured against the code it replaces in one run (`slackq CPU / base CPU`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.venv import use_project_venv  # noqa: E402

use_project_venv()

import httpx  # noqa: E402

from slackq.embedded import RedisProcess, free_port  # noqa: E402 - after the path set-up
from tests.slack_requests import app_mention_envelope, encode, signed_headers  # noqa: E402

SECRET = "bench-signing-secret-0123456789abcdef"
P99_TARGET_MS = 5.0
LOAD_JS = ROOT / "bench" / "node" / "webhook_load.js"


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


def run_rate(port: int, rate: int, seconds: float, tag: str, work: Path) -> Result:
    """Send rate*seconds signed events on schedule (bench/node/webhook_load.js)."""
    count = int(rate * seconds)
    requests = work / "requests.bin"
    with requests.open("wb") as out:
        for i in range(count):
            raw = request_bytes(port, f"Ev{tag}{rate}N{i:07d}")
            out.write(struct.pack(">I", len(raw)) + raw)
    out_ = subprocess.run(["node", str(LOAD_JS), str(port), str(rate), str(requests)],
                          capture_output=True, text=True, check=False, timeout=seconds + 120)
    if out_.returncode != 0:
        raise SystemExit(f"load generator failed:\n{out_.stderr[-2000:]}")
    result = json.loads(out_.stdout.strip().splitlines()[-1])
    return Result(rate, [float(v) for v in result["latencies_ms"]],
                  int(result["errors"]) + count - len(result["latencies_ms"]))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, log: Path,
           cwd: Path = ROOT) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
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


def table(rates: list[int], results: dict[str, dict[int, list[Result]]]) -> str:
    """Medians over the repetitions of each rate's p50/p95/p99 and CPU; errors summed."""
    names = list(results)
    ratios = [(a, b) for a, b in (("slackq", "floor"), ("base", "floor"), ("slackq", "base"))
              if a in results and b in results]  # issue 18's ratio, and a change's effect
    header = "| events/s | " + " | ".join(
        f"{n} p50 | {n} p95 | {n} p99 | {n} non-200 | {n} CPU us/req" for n in names) + "".join(
        f" | {a} CPU / {b} CPU" for a, b in ratios) + " |"
    lines = [header, "|" + "---|" * (1 + 5 * len(names) + len(ratios))]
    for rate in rates:
        cells = []
        for name in names:
            runs = results[name][rate]
            cells += [f"{_median(runs, 0.50):.2f}", f"{_median(runs, 0.95):.2f}",
                      f"{_median(runs, 0.99):.2f}", str(sum(r.errors for r in runs)),
                      f"{_cpu(runs):.0f}"]
        cells += [f"{_cpu(results[a][rate]) / _cpu(results[b][rate]):.2f}" for a, b in ratios]
        lines.append(f"| {rate} | " + " | ".join(cells) + " |")
    for name in names:
        ok = [rate for rate in rates if _median(results[name][rate], 0.99) < P99_TARGET_MS
              and not any(r.errors for r in results[name][rate])]
        best = max(ok) if ok else "none"
        lines.append(f"\n{name}: highest rate with p99 < {P99_TARGET_MS:g} ms (median of the "
                     f"runs) and no error: {best}")
    return "\n".join(lines)


def _cpu(runs: list[Result]) -> float:
    return statistics.median(r.cpu_us_per_request for r in runs)


def _median(runs: list[Result], q: float) -> float:
    return statistics.median(r.percentile(q) for r in runs)


def measure(rates: list[int], seconds: float, reps: int, servers: dict[str, tuple[int, int]],
            redis_server: RedisProcess, work: Path) -> dict[str, dict[int, list[Result]]]:
    """Each rate `reps` times, the servers taking turns; `servers` maps a name to (port, pid).

    Before every run Redis is emptied and its AOF rewritten, so that each run starts from the
    same state and no rewrite fires in the middle of one (a run with one is flagged). After a
    slackq run, the queue must hold exactly one job per 200.
    """
    results: dict[str, dict[int, list[Result]]] = {name: {r: [] for r in rates}
                                                   for name in servers}
    for name, (port, _) in servers.items():  # warm-up: connections, Lua scripts, caches
        run_rate(port, 200, 1.0, f"W{name[:2]}", work)
    for rep in range(reps):
        for rate in rates:
            for name, (port, pid) in servers.items():
                rewrites = settle(redis_server)
                cpu_before = cpu_seconds(pid)
                result = run_rate(port, rate, seconds, f"{name[:2].upper()}{rep}", work)
                result.cpu_us_per_request = ((cpu_seconds(pid) - cpu_before)
                                             / (rate * seconds) * 1e6)
                results[name][rate].append(result)
                note = ""
                if settle_rewrites(redis_server) != rewrites:
                    note = "  (an AOF rewrite ran during this run)"
                if name in STORED:
                    stored = STORED[name](redis_server)
                    answered = len(result.latencies_ms) - result.errors
                    if stored < answered:  # a 200 for an event that is not stored
                        raise SystemExit(f"{name} answered 200 {answered} times but stored "
                                         f"{stored} events")
                    if stored > answered:  # stored, its 200 lost in the generator's timeout
                        note += f"  ({stored - answered} stored without a 200 seen)"
                print(f"  {name:>6} {rate:>5}/s  p50 {result.percentile(0.5):6.2f}  "
                      f"p99 {result.percentile(0.99):7.2f} ms  non-200 {result.errors}  "
                      f"server CPU {result.cpu_us_per_request:4.0f} us/request{note}",
                      file=sys.stderr, flush=True)
    return results


def settle(redis_server: RedisProcess) -> int:
    """Empty Redis and rewrite its AOF; return the count of rewrites so far."""
    import redis

    with redis.Redis(port=redis_server.port) as client:
        client.flushdb()
        client.bgrewriteaof()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = client.info("persistence")
            if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
                return int(info["aof_rewrites"])
            time.sleep(0.05)
    raise SystemExit("the AOF rewrite did not finish within 60 s")


def settle_rewrites(redis_server: RedisProcess) -> int:
    import redis

    with redis.Redis(port=redis_server.port) as client:
        info = client.info("persistence")
        return int(info["aof_rewrites"]) + int(info["aof_rewrite_in_progress"])


SERVERS = {  # name -> command; each is served by uvicorn in its own process
    "slackq": [sys.executable, "-m", "producers"],  # as the Procfile runs it
    "base": [sys.executable, "-m", "producers"],  # the same, from --base's checkout
    "floor": [sys.executable, "bench/store_floor_app.py"],  # bare store-before-ack
    "bolt": [sys.executable, "bench/bolt_app.py"],  # ack without I/O
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="250,500,750,1000,1500,2000,3000")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3, help="runs per rate and server")
    choices = [name for name in SERVERS if name != "base"]  # base: with --base only
    parser.add_argument("--servers", default=",".join(choices),
                        help=f"comma-separated, among {', '.join(choices)}")
    parser.add_argument("--base", type=Path,
                        help="another checkout whose web process runs as `base` beside slackq")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    names = [name for name in args.servers.split(",") if name]
    if not names or any(name not in choices for name in names):
        parser.error(f"--servers: choose among {', '.join(choices)}")
    cwds = dict.fromkeys(names, ROOT)
    if args.base is not None:
        if not (args.base / "producers" / "__main__.py").is_file():
            parser.error(f"--base: {args.base} holds no producers/__main__.py")
        names.insert(names.index("slackq") if "slackq" in names else len(names), "base")
        cwds["base"] = args.base.resolve()
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        work = Path(tmp)
        redis_server = RedisProcess(data_dir=work / "redis")
        redis_server.start()
        env = {**os.environ, "SLACK_SIGNING_SECRET": SECRET, "REDIS_URL": redis_server.url,
               "LOG_FORMAT": "json", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        try:
            with ExitStack() as stack:
                servers = {}
                for name in names:
                    port = free_port()
                    pid = stack.enter_context(server(SERVERS[name], {**env, "PORT": str(port)},
                                                     port, work / f"{name}.log", cwds[name]))
                    servers[name] = (port, pid)
                results = measure(rates, args.seconds, args.reps, servers, redis_server, work)
        finally:
            redis_server.stop()
    load = os.getloadavg()[0]
    print(f"\nack latency in ms from the scheduled send time (medians of {args.reps} runs of "
          f"{args.seconds:g} s per rate); {os.cpu_count()} CPUs; load average at the end "
          f"{load:.2f}; every 200 of slackq and of the floor was stored\n")
    print(table(rates, results))
    return 0


def redis_server_jobs(redis_server: RedisProcess) -> int:
    import redis

    with redis.Redis(port=redis_server.port) as client:
        return int(client.llen("bull:slack-events:wait"))


def floor_events(redis_server: RedisProcess) -> int:
    import redis

    with redis.Redis(port=redis_server.port) as client:
        return int(client.llen("floor:events")) + int(client.llen("bull:slack-events:wait"))


# What each storing server has stored since the last settle (FLUSHDB), to compare with its 200s.
STORED = {"slackq": redis_server_jobs, "base": redis_server_jobs, "floor": floor_events}


if __name__ == "__main__":
    sys.exit(main())
