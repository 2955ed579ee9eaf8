"""End-to-end failover campaigns on a Sentinel topology: webhook -> Redis -> worker -> Slack.

    python -m harness failover --fault kill --ack replicas:1
    python -m harness failover --fault partition --ack memory      # root, Linux (ip netns)

One campaign: a primary, two replicas and three sentinels (`harness.topology`); the Procfile's
web and worker processes on its `redis+sentinel://` URL, replying to the Slack stand-in; signed
`app_mention` events at `rate` per second. Once `before` events are acknowledged, the fault:

* `kill`: SIGKILL the primary;
* `partition`: cut the primary off from the replicas and the sentinels while the web and worker
  still reach it; healed `partition_seconds` after the sentinels promoted a replica (the old
  primary then rejoins as a replica and drops what it took alone).

Traffic runs on for `after` acknowledged events past the fault (or `deadline`), then the
campaign waits for the replies. The report counts, per ACK_DURABILITY mode: events acked (200),
`lost` (acked, never replied to), `records_lost` (acked, no job left on the final primary: what
a failover dropped, even if a worker on the old primary replied first), duplicates (replies
beyond one), requests not acked, the longest gap between two 200s, the acks' p99, and the times
from the fault to the first stored and first completed job.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from harness.slack_standin import FakeSlack
from harness.topology import SentinelTopology, ask
from slackq.embedded import PROJECT_ROOT, free_port

SECRET = "failover-campaign-signing-secret"
TOKEN = "xoxb-fake"
Fault = Literal["kill", "partition"]


@dataclass(frozen=True)
class FailoverConfig:
    fault: Fault = "kill"
    ack: str = "memory"
    rate: float = 25.0
    before: int = 20
    after: int = 40
    partition_seconds: float = 3.0
    deadline: float = 90.0
    worker_processes: int = 2


def _signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest.hexdigest()}",
            "Content-Type": "application/json"}


def _event(index: int) -> bytes:
    ts = f"1700000000.{index:06d}"
    return json.dumps({
        "type": "event_callback", "team_id": "T0CAMPAIGN", "api_app_id": "A0CAMPAIGN",
        "event_id": f"Ev0FO{index:06d}", "event_time": 1700000000,
        "event": {"type": "app_mention", "user": "U0USER", "text": "<@U0BOT> hi", "ts": ts,
                  "channel": "C0CAMPAIGN", "event_ts": ts},
        "authorizations": [{"team_id": "T0CAMPAIGN", "user_id": "U0BOT", "is_bot": True}],
    }, separators=(",", ":")).encode()


@dataclass
class Traffic:
    """Signed events from a thread at a fixed rate; what each got and when."""

    base: str
    rate: float
    sent: list[tuple[int, float, int, float]] = field(default_factory=list)  # i, at, status, s
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        index = 0
        with httpx.Client() as client:
            while not self.stop.is_set():
                index += 1
                at, body = time.monotonic(), _event(index)
                try:
                    status = client.post(f"{self.base}/slack/events", content=body,
                                         headers=_signed(body), timeout=5).status_code
                except httpx.HTTPError:
                    status = 0
                self.sent.append((index, at, status, time.monotonic() - at))
                self.stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - at)))

    def acked(self, since: float = 0.0) -> list[int]:
        return [i for i, at, status, _ in self.sent if status == 200 and at >= since]


class Dyno:
    """One Procfile process (`python -m producers` / `python -m worker`), output to a file."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen([sys.executable, "-m", module], cwd=PROJECT_ROOT, env=env,
                                      stdout=self._out, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._out.close()


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def _dynos(url: str, slack: FakeSlack, config: FailoverConfig,
           work: Path) -> tuple[str, list[Dyno]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "REDIS_"))}
    env.update(REDIS_URL=url, SLACK_SIGNING_SECRET=SECRET, SLACK_BOT_TOKEN=TOKEN,
               SLACK_API_URL=slack.base_url, PORT=str(port), ACK_DURABILITY=config.ack,
               WORKER_PROCESSES=str(config.worker_processes), LOG_FORMAT="json",
               WORKER_RATE_PER_CHANNEL="0", WORKER_RATE_PER_TEAM="0")
    dynos = [Dyno("producers", env, work / "web.log"), Dyno("worker", env, work / "worker.log")]
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=1).status_code == 200 and \
                b"worker_started" in (work / "worker.log").read_bytes()
        except httpx.HTTPError:
            return False

    _wait(healthy, 60, "the web and worker processes to start")
    return base, dynos


def run_failover(config: FailoverConfig, work: Path) -> dict[str, Any]:
    """One campaign in `work` (topology data, process logs); returns the report."""
    topology = SentinelTopology(work / "topology",
                                partitionable=config.fault == "partition").start()
    slack = FakeSlack().start()
    dynos: list[Dyno] = []
    try:
        base, dynos = _dynos(topology.url, slack, config, work)
        traffic = Traffic(base, config.rate)
        sender = threading.Thread(target=traffic.run, daemon=True)
        sender.start()
        try:
            _wait(lambda: len(traffic.acked()) >= config.before, config.deadline,
                  f"{config.before} events acknowledged before the fault")
            old = (topology.partition_primary() if config.fault == "partition"
                   else topology.kill_primary())
            fault_at, fault_wall = time.monotonic(), time.time()  # the fault is complete
            topology.wait_failover(old.port)
            if config.fault == "partition":
                time.sleep(config.partition_seconds)  # the fault's length, not a wait for a state
                topology.heal()
            _wait(lambda: len(traffic.acked(fault_at)) >= config.after, config.deadline,
                  f"{config.after} events acknowledged after the fault")
        finally:
            traffic.stop.set()
            sender.join(10)
        if config.fault == "partition":
            _wait(lambda: topology.replica_in_sync(old), config.deadline,
                  "the old primary to rejoin as a replica")
        return _report(config, topology, slack, traffic, fault_at, fault_wall)
    finally:
        for dyno in reversed(dynos):
            dyno.stop()
        slack.stop()
        topology.stop()


def _report(config: FailoverConfig, topology: SentinelTopology, slack: FakeSlack,
            traffic: Traffic, fault_at: float, fault_wall: float) -> dict[str, Any]:
    acked = traffic.acked()
    expected = {f"1700000000.{i:06d}" for i in acked}

    def replies() -> list[str]:
        return [str(c.args.get("thread_ts")) for c in slack.calls_to("chat.postMessage")]

    last = f"1700000000.{acked[-1]:06d}"
    try:  # every acked event's reply, or at least the last one's
        _wait(lambda: expected <= set(replies()), 30, "a reply to every acked event")
    except TimeoutError:
        _wait(lambda: last in replies(), 30, "a reply to the last acked event")
    final = replies()
    primary = topology.primary_port()
    assert primary is not None
    node = topology.node(primary)
    records = set(_job_ids(node.host, node.port))
    times = [at for _, at, status, _ in traffic.sent if status == 200]
    seconds = sorted(s for _, _, status, s in traffic.sent if status == 200)
    # Jobs of requests sent after the fault: when the first was stored (its 200 came back) and
    # when the first was completed (its reply reached the stand-in).
    sent_after = {f"1700000000.{i:06d}": at + s for i, at, status, s in traffic.sent
                  if status == 200 and at > fault_at}
    completed = [c.at for c in slack.calls_to("chat.postMessage")
                 if c.args.get("thread_ts") in sent_after]
    return {
        "fault": config.fault, "ack_durability": config.ack, "acked": len(acked),
        "lost": len(expected - set(final)),
        "records_lost": sum(1 for i in acked if f"Ev0FO{i:06d}" not in records),
        "duplicates": len(final) - len(set(final)),
        "not_acked": sum(1 for _, _, status, _ in traffic.sent if status != 200),
        "unavailable_s": round(max((b - a for a, b in itertools.pairwise(times)),
                                   default=0.0), 3),
        "ack_p99_ms": round(seconds[int(0.99 * (len(seconds) - 1))] * 1000, 1),
        "fault_to_first_stored_s": round(min(sent_after.values()) - fault_at, 3),
        "fault_to_first_completed_s": round(min(completed) - fault_wall, 3) if completed
        else None,
    }


def _job_ids(host: str, port: int) -> list[str]:
    keys = ask(host, port, lambda client: client.keys("bull:slack-events:Ev0FO*"))
    return [str(key).rsplit(":", 1)[-1] for key in keys or []]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness failover",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--fault", choices=("kill", "partition"), default="kill")
    parser.add_argument("--ack", default="memory", help="ACK_DURABILITY (memory, replicas:1…)")
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    config = FailoverConfig(fault=args.fault, ack=args.ack, rate=args.rate)
    with tempfile.TemporaryDirectory() as temporary:
        report = run_failover(config, args.work_dir or Path(temporary))
    print(json.dumps(report))
    return 0
