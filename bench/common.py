"""What every benchmark shares: the job, process statistics from /proc, the Redis server."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slackq.contract import job_options
from slackq.embedded import PROJECT_ROOT, RedisProcess
from slackq.settings import Settings

BENCH_DIR = PROJECT_ROOT / "bench"
NODE_DIR = BENCH_DIR / "node"
# Node BullMQ 6.7.0 + ioredis, pinned by the interop tests' lock file (`npm ci` there).
NODE_MODULES_DIR = PROJECT_ROOT / "tests" / "node"
JOB_NAME = "bench_noop"
PAYLOAD_BYTES = 1100
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def payload(event_id: str) -> dict[str, Any]:
    """A Slack `event_callback` envelope of about 1.1 KB, as the webhook stores it."""
    event = {"type": "app_mention", "user": "U0USER001", "text": "", "ts": "1700000000.000100",
             "channel": "C0CHAN001", "event_ts": "1700000000.000100"}
    envelope = {"token": "legacy-verification-token", "team_id": "T0TEAM001",
                "api_app_id": "A0APP001", "event": event, "type": "event_callback",
                "event_id": event_id, "event_time": 1700000000,
                "authorizations": [{"team_id": "T0TEAM001", "user_id": "U0BOT", "is_bot": True}]}
    size = len(json.dumps(envelope, separators=(",", ":")))
    event["text"] = "<@U0BOT> " + "x" * max(0, PAYLOAD_BYTES - size - 9)
    return envelope


def job_id(tag: str, index: int) -> str:
    """A job id both BullMQ implementations accept (not integer-like, no ':')."""
    return f"Ev{tag}x{index:07d}"


def options(event_id: str) -> dict[str, Any]:
    """The options the webhook uses (slackq.contract): id, attempts, backoff, removal, dedupe."""
    return job_options(event_id, Settings())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def descendants(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(child) for child in children)
    return found


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_rss_kb(pid: int) -> int:
    return sum(rss_kb(p) for p in descendants(pid))


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in descendants(pid))


def start_redis(data_dir: Path) -> RedisProcess:
    """The project's redis.conf (AOF everysec, noeviction) on a free port."""
    server = RedisProcess(data_dir=data_dir)
    server.start()
    return server


def python() -> str:
    return sys.executable


def node_ready() -> bool:
    modules = NODE_MODULES_DIR / "node_modules"
    return (modules / "bullmq").exists() and (modules / "ioredis").exists()


def ensure_node_modules() -> None:
    """`npm ci` tests/node (bullmq 6.7.0 + ioredis from its lock file) when not done yet."""
    if not node_ready():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"],
                       cwd=NODE_MODULES_DIR, check=True)


class Background:
    """A worker (Node or Python) running in the background, ready once its log shows a marker."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path,
                 marker: str, count: int = 1, cwd: Path = PROJECT_ROOT) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      cwd=cwd, start_new_session=True)
        self.marker, self.count = marker, count

    def wait_ready(self, timeout: float = 60.0) -> Background:
        deadline = time.monotonic() + timeout
        while self.log_path.read_text(errors="replace").count(self.marker) < self.count:
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.popen.args} not ready:\n"
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.02)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def rss_kb(self) -> int:
        return tree_rss_kb(self.pid)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self, grace: float = 35.0) -> None:
        """SIGTERM, then SIGKILL to the process group after `grace` seconds."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, 9)
                self.popen.wait()
        self._log.close()


def job_template() -> str:
    """The job for Node's side (bench/node/job.js), `__ID__` standing for the event id."""
    return json.dumps({"payload": payload("__ID__"), "options": options("EvTemplate")}).replace(
        "EvTemplate", "__ID__")
