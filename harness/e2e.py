"""End-to-end campaigns: the product itself (webhook, batcher, worker, effect log) under faults.

    python -m harness e2e --campaign crash|down|powerloss|maxmemory|sigstop|control|all \
        [--rate 20 --seconds 20] [--topology sentinel]

One campaign: a harness-managed `redis-server` with the project's `redis.conf` (AOF everysec,
noeviction), the Procfile's `web` and `worker` processes on it (single workspace, bot token
`xoxb-fake`, `SLACK_API_URL` at the Slack stand-in), and signed `app_mention` events posted at
`rate` per second for `seconds` (`harness.webhook_traffic`). After `fault_after` seconds the
stand-in holds its answers for `hold` seconds (jobs pile up: some mid-call at Slack, some
waiting), then the fault begins and Slack answers again, so that Slack accepts calls while
Redis is broken:

* `crash`: SIGKILL Redis, restart it at once on its data directory (it reloads the AOF);
* `down`: the same, restarted after `outage` seconds of refused connections (longer than the
  worker's command retry);
* `powerloss`: SIGKILL, drop every byte not fsynced (`harness.powerloss`'s FUSE layer), restart;
* `maxmemory`: `CONFIG SET maxmemory 1` (every write refused, noeviction) for `outage` seconds,
  then the previous value again;
* `sigstop`: SIGSTOP Redis for `outage` seconds (longer than the clients' connection retry),
  then SIGCONT;
* `control`: `crash` on a Redis with `appendonly no`: it must lose acknowledged events, which
  shows that the tally sees a loss when there is one.

Then traffic runs to its end, the queue drains, and the tally compares what the webhook answered
with what Slack received: every 200 must have exactly one reply. A power loss may lose what was
acknowledged inside the fsync window: `lost_outside_window` (acked more than `loss_window`
seconds before the kill, or than the disk's measured `fsync_lag_s` when longer, as in
`harness.checker`) must be 0, and `window_bound` is how many acked events the window held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.checker import fsync_lag
from harness.held_slack import HeldSlack
from harness.procfile import Proc, Stack, procfile_stack
from harness.servers import resolve_binary
from harness.traffic import TrafficConfig, drain, failed_jobs
from harness.webhook_traffic import EventTraffic, Tally, event_ts, tally
from slackq.connection import PROBE, sync_redis_client
from slackq.embedded import RedisProcess

SECRET = "e2e-campaign-signing-secret"
TOKEN = "xoxb-fake"
CAMPAIGNS = ("crash", "down", "powerloss", "maxmemory", "sigstop", "control")
# Pacing would spread the replies over minutes: these campaigns are about Redis, not Slack.
NO_PACING = {"WORKER_RATE_PER_CHANNEL": "0", "WORKER_RATE_PER_TEAM": "0"}
# How long each fault lasts by default: 10 s of refused writes; 30 s down or stopped, past the
# job locks (20 s) and the worker's command retry (~1 s apart for about a lock's life).
OUTAGE = {"down": 30.0, "maxmemory": 10.0, "sigstop": 30.0}
# Campaign k of a series sends events k*100000+1, ...: message ts 1700000000.xxxxxx holds 6 digits.
INDEXES_PER_CAMPAIGN = 100_000


@dataclass(frozen=True)
class E2EConfig:
    """One campaign; the CLI maps its options onto these fields."""

    campaign: str = "crash"
    rate: float = 20.0
    seconds: float = 20.0
    fault_after: float = 4.0
    hold: float = 1.0
    outage: float | None = None  # None: OUTAGE's value (0 for crash and power loss)
    loss_window: float = 2.0
    server: str | None = None
    drain_timeout: float = 120.0
    worker_env: dict[str, str] = field(default_factory=dict)

    @property
    def appendonly(self) -> str:
        return "no" if self.campaign == "control" else "yes"

    @property
    def outage_seconds(self) -> float:
        return OUTAGE.get(self.campaign, 0.0) if self.outage is None else self.outage


@dataclass
class Fault:
    """When the fault began and ended (monotonic and wall clock), what it found pending."""

    began: float = 0.0
    began_wall: float = 0.0
    ended: float = 0.0
    pending: int = 0  # events acked and not yet replied to when the fault began
    held: int = 0  # calls Slack had accepted and not yet answered
    dropped_bytes: int = 0
    # Power loss: seconds the disk's durability lagged behind the kill (`checker.fsync_lag`).
    fsync_lag: float | None = None


def run_e2e(configs: Sequence[E2EConfig], work: Path) -> list[dict[str, Any]]:
    """Run campaigns one after the other on one stack (one Redis, one web, one worker), their
    files (Redis data, process logs) in `work`; return one report per campaign.

    Sharing the stack saves a start-up per campaign (~5-10 s on a busy machine: CI runs the
    quick forms this way); the queue drains between campaigns, and each campaign's events have
    their own range of indexes, so each tally is its own. A `control` must come last (it
    leaves Redis without its data). With a `powerloss`, the data directory of the whole series
    is on the FUSE layer, and only the `powerloss` campaign drops what was not fsynced; the
    others see the layer as a disk with a page cache (the tests run `crash` there too).
    """
    if any(c.campaign == "control" for c in configs[:-1]):
        raise ValueError("the control campaign must be the last of a series")
    first = configs[0]
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        disk = None
        if any(c.campaign == "powerloss" for c in configs):
            disk = _power_loss_disk(work)
            disk.start()
            stack.callback(disk.stop)
        server = RedisProcess(data_dir=work / "data", binary=resolve_binary(first.server),
                              overrides={"appendonly": first.appendonly,
                                         "appendfsync": "everysec"},
                              log_file=work / "redis.log")
        stack.enter_context(_running(server))
        slack = HeldSlack(hold_seconds=60.0).start()
        stack.callback(slack.stop)
        slack.release()  # Slack answers at once until a campaign's hold
        env = {**NO_PACING, "WORKER_PROCESSES": "1", **first.worker_env}
        dynos = stack.enter_context(procfile_stack(server.url, slack.base_url, work,
                                                   secret=SECRET, token=TOKEN, env=env))
        return [_campaign(config, number, server, disk, slack, dynos)
                for number, config in enumerate(configs)]


def _campaign(config: E2EConfig, number: int, server: RedisProcess, disk: Any,
              slack: HeldSlack, dynos: Stack) -> dict[str, Any]:
    """One campaign of a series: traffic, the fault, the drain, the tally."""
    if config.appendonly == "no":
        _without_aof(server)
    count = max(1, int(config.rate * config.seconds))
    if count >= INDEXES_PER_CAMPAIGN:
        raise ValueError(f"at most {INDEXES_PER_CAMPAIGN - 1} events per campaign")
    first = number * INDEXES_PER_CAMPAIGN + 1
    logged = _log_lines(dynos.worker)
    traffic = EventTraffic(dynos.base, SECRET, config.rate, count, first=first).start()
    try:
        fault = _inject(config, server, disk, slack, traffic)
        traffic.join(config.seconds + 60)
    finally:
        traffic.finish()
    queue = TrafficConfig(queue="slack-events", prefix="bull")
    left = asyncio.run(drain(server.url, queue, config.drain_timeout))
    failed = asyncio.run(failed_jobs(server.url, queue))
    dynos.check_alive()
    replies = [call.args.get("thread_ts") for call in slack.fake.calls_to("chat.postMessage")]
    counted = tally(traffic.sent, replies, range(first, first + count))
    report = _report(config, traffic, counted, fault, left, len(failed))
    lines, errors = (now - then for now, then in zip(_log_lines(dynos.worker), logged,
                                                     strict=True))
    return {**report, "worker_log_lines": lines, "worker_error_lines": errors}


def _log_lines(proc: Proc) -> tuple[int, int]:
    """The worker's log so far: lines, and lines at level error (an error storm shows here)."""
    lines = proc.output().splitlines()
    return len(lines), sum(1 for line in lines if '"level": "error"' in line)


def _without_aof(server: RedisProcess) -> None:
    """The control's Redis: no AOF from now on, nor when it restarts."""
    client = sync_redis_client(server.url, PROBE)
    try:
        client.config_set("appendonly", "no")
    finally:
        client.close()
    server.overrides["appendonly"] = "no"


def _power_loss_disk(work: Path) -> Any:
    from harness.powerloss import PowerLossDisk  # FUSE: imported only where it is used

    return PowerLossDisk(backing=work / "disk", mount=work / "data", control_dir=work)


@contextlib.contextmanager
def _running(server: RedisProcess) -> Iterator[RedisProcess]:
    server.start(ready_timeout=60)
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # a failed sigstop run must not hang
        server.stop()


def _until(moment: float) -> None:
    """Sleep until `moment` (monotonic): a point in the campaign's schedule, not an effect."""
    time.sleep(max(0.0, moment - time.monotonic()))


def _inject(config: E2EConfig, server: RedisProcess, disk: Any, slack: HeldSlack,
            traffic: EventTraffic) -> Fault:
    """Hold Slack's answers, begin the fault, let Slack answer, end the fault."""
    started = time.monotonic()
    _until(started + config.fault_after)
    slack.hold()
    _until(time.monotonic() + config.hold)
    fault = Fault(began=time.monotonic(), began_wall=time.time())
    replied = {c.args.get("thread_ts") for c in slack.fake.calls_to("chat.postMessage")}
    fault.pending = sum(1 for i in traffic.acked() if event_ts(i) not in replied)
    fault.held = slack.posts_arrived() - len(slack.fake.calls_to("chat.postMessage"))
    end_fault = _begin(config.campaign, server)
    if config.campaign == "powerloss":
        # Only here: the other campaigns may share the FUSE-backed stack, and a drop there
        # would turn a crash into a power cut (or, under a live Redis, corrupt the AOF).
        fault.dropped_bytes = disk.drop()
        fault.fsync_lag = fsync_lag(fault.began_wall, disk.aof_fsync_times())
    slack.release()
    _until(fault.began + config.outage_seconds)
    end_fault()
    fault.ended = time.monotonic()
    return fault


def _begin(campaign: str, server: RedisProcess) -> Callable[[], None]:
    """Begin the campaign's fault now; return what ends it."""
    if campaign in ("crash", "down", "powerloss", "control"):
        server.kill()
        return lambda: _restart(server)
    assert server.process is not None
    if campaign == "sigstop":
        pid = server.process.pid
        os.kill(pid, signal.SIGSTOP)
        return lambda: os.kill(pid, signal.SIGCONT)
    if campaign == "maxmemory":
        client = sync_redis_client(server.url, PROBE)
        before = str(client.config_get("maxmemory")["maxmemory"])
        client.config_set("maxmemory", 1)  # below any use: every write refused (noeviction)

        def restore() -> None:
            client.config_set("maxmemory", before)
            client.close()

        return restore
    raise ValueError(f"unknown campaign {campaign!r}")


def _restart(server: RedisProcess) -> None:
    server.start(ready_timeout=60)


def _report(config: E2EConfig, traffic: EventTraffic, counted: Tally, fault: Fault,
            left: dict[str, int], failed: int) -> dict[str, Any]:
    acked_at = {s.index: s.answered_at for s in traffic.sent if s.status == 200}
    ages = [fault.began - acked_at[i] for i in counted.lost]

    window = max(config.loss_window, fault.fsync_lag or 0.0)

    def in_window(age: float) -> bool:
        """Acked at most `loss_window` before the kill (longer when the disk's fsyncs measurably
        lagged, as in `harness.checker`), or after it but before the restart (Redis stored it
        before the kill; the 200 was still on its way)."""
        return fault.began - fault.ended <= age <= window

    bound = sum(1 for at in acked_at.values() if in_window(fault.began - at))
    report: dict[str, Any] = {
        "campaign": config.campaign, "topology": "single",
        "appendonly": config.appendonly, "appendfsync": "everysec",
        "rate": config.rate, "seconds": config.seconds,
        **counted.row(),
        "failed_jobs": failed,
        "pending_at_fault": fault.pending, "held_at_fault": fault.held,
        "outage_s": round(fault.ended - fault.began, 2),
        "lost_outside_window": sum(1 for age in ages if not in_window(age)),
        "window_bound": bound if config.campaign == "powerloss" else 0,
        "oldest_lost_age_s": round(max(ages), 3) if ages else None,
        "fsync_lag_s": fault.fsync_lag,
        "dropped_bytes": fault.dropped_bytes, "undrained": left,
        "lost_events": counted.lost[:20], "doubled_events": counted.doubled[:20],
        "config": {k: v for k, v in asdict(config).items() if k != "worker_env"} |
        {"worker_env": config.worker_env},
    }
    report["verdict"], report["expected"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> tuple[str, str]:
    """(`pass`|`fail`, what a sound system gives): a power loss may lose acked events inside the
    fsync window only; the control must lose some; every other campaign loses and doubles none.
    """
    if report["acked"] == 0 or report["undrained"]:
        return "fail", "pass"
    if report["campaign"] == "control":
        return ("fail" if report["lost"] else "pass"), "fail"
    if report["campaign"] == "powerloss":
        ok = report["lost_outside_window"] == 0 and report["duplicates"] <= report["window_bound"]
        return ("pass" if ok else "fail"), "pass"
    ok = report["lost"] == 0 and report["duplicates"] == 0
    return ("pass" if ok else "fail"), "pass"


def quick(campaign: str, **changes: Any) -> E2EConfig:
    """A short campaign for CI: a few seconds of traffic, a 4 s job lock (the worker's command
    retry is sized from it), so that a 7 s SIGSTOP outlasts both."""
    outage = {"down": 7.0, "maxmemory": 3.0, "sigstop": 7.0}.get(campaign, 0.0)
    # Traffic goes on 2 s past the fault: the table shows the webhook taking events again.
    config = E2EConfig(campaign=campaign, rate=20.0, seconds=1.0 + 1.0 + outage + 2.0,
                       fault_after=1.0, hold=1.0, outage=outage,
                       worker_env={"WORKER_LOCK_DURATION_MS": "4000",
                                   "WORKER_STALLED_INTERVAL_MS": "1000"})
    return replace(config, **changes)
