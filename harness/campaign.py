"""One campaign: start the server, run traffic, kill and restart, drain, check, report."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from harness.chaos import Chaos, UnsyncedDropper, kill_schedule
from harness.checker import CheckInput, Mode, check
from harness.ledger import Ledger, read_ledger
from harness.servers import LocalServer, ServerControl, resolve_binary
from harness.traffic import (
    Producers,
    TrafficConfig,
    Workers,
    drain,
    failed_jobs,
    plan_jobs,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CampaignConfig:
    """Everything a campaign varies; the CLI maps its options one to one onto these fields."""

    mode: Mode = "crash"
    kills: int = 3
    server: str | None = None
    backend: Literal["local", "docker"] = "local"
    seed: int | None = None
    appendonly: str = "yes"
    appendfsync: str = "everysec"
    loss_window: float = 2.0
    drain_timeout: float = 60.0
    # > 0: the data directory sits on the FUSE layer (in either mode) and every fsync takes this
    # many extra seconds, a slow disk. Redis then postpones AOF writes but still replies.
    slow_fsync: float = 0.0
    work_dir: Path | None = None
    traffic: TrafficConfig = field(default_factory=TrafficConfig)


@dataclass
class Layout:
    """Where a campaign keeps its files; the ledger is never inside the server's data dir."""

    root: Path

    @property
    def ledger(self) -> Path:
        return self.root / "ledger"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"


async def run_campaign(config: CampaignConfig) -> dict[str, Any]:
    """Run one campaign and return its report (see `harness.report`)."""
    seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
    root = config.work_dir or Path(tempfile.mkdtemp(prefix="slackq-durability-"))
    layout = Layout(root)
    log.info("campaign_starting", mode=config.mode, seed=seed, work_dir=str(root))
    print(f"durability: mode={config.mode} seed={seed} work_dir={root}", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        dropper = None
        if config.mode == "powerloss" or config.slow_fsync > 0:
            from harness.powerloss import PowerLossDisk

            disk = PowerLossDisk(backing=layout.disk, mount=layout.data,
                                 control_dir=layout.root, fsync_delay=config.slow_fsync)
            await asyncio.to_thread(disk.start)
            stack.callback(disk.stop)
            dropper = disk if config.mode == "powerloss" else None
        server = _server(config, layout)
        await asyncio.to_thread(server.start)
        stack.callback(server.stop)
        started = time.monotonic()
        outcome = await _traffic_with_chaos(config, server, layout, seed, dropper)
        elapsed = time.monotonic() - started
    return _report(config, seed, layout, server, outcome, elapsed)


def _server(config: CampaignConfig, layout: Layout) -> ServerControl:
    if config.backend == "docker":
        from harness.servers import ContainerServer

        return ContainerServer(command=("redis-server --appendonly "
                                        f"{config.appendonly} --appendfsync {config.appendfsync}"))
    return LocalServer(
        data_dir=layout.data, binary=resolve_binary(config.server),
        overrides={"appendonly": config.appendonly, "appendfsync": config.appendfsync},
        log_file=layout.server_log,
    )


@dataclass
class Outcome:
    undrained: dict[str, int]
    ready_seconds: list[float]
    dropped_bytes: int
    producer_errors: int
    worker_errors: int


async def _traffic_with_chaos(config: CampaignConfig, server: ServerControl, layout: Layout,
                              seed: int, dropper: UnsyncedDropper | None) -> Outcome:
    traffic = config.traffic
    ledger = Ledger(layout.ledger)
    producers = Producers(server.url, ledger, traffic, plan_jobs(traffic, seed))
    workers = Workers(server.url, ledger, traffic)
    # Each server incarnation lives longer than the loss window plus a margin, so that every
    # kill can expose the loss of writes acknowledged outside the window (the controls).
    uptime = config.loss_window + 1.5
    chaos = Chaos(server, ledger, dropper, min_uptime=uptime,
                  pending=lambda: len(producers.acked - workers.started))
    warmup = min(uptime + 0.5, traffic.duration / 2)
    offsets = kill_schedule(random.Random(seed), config.kills, traffic.duration,
                            warmup=warmup, tail=min(1.5, traffic.duration / 5))
    try:
        await workers.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + traffic.duration
        producers.start()
        await chaos.run(offsets)
        # Traffic goes on until the planned duration is over (and a moment after the last restart).
        await asyncio.sleep(max(0.5, end - loop.time()))
        await producers.finish(grace=10.0)
        undrained = await drain(server.url, traffic, config.drain_timeout)
        await workers.close()
        for job_id, reason in (await failed_jobs(server.url, traffic)).items():
            ledger.failed(job_id, reason)
    finally:
        ledger.close()
    return Outcome(undrained, chaos.ready_seconds, chaos.dropped_bytes,
                   producers.errors.total, workers.errors.total)


def _report(config: CampaignConfig, seed: int, layout: Layout, server: ServerControl,
            outcome: Outcome, elapsed: float) -> dict[str, Any]:
    data = read_ledger(layout.ledger)
    result = check(data, CheckInput(mode=config.mode, loss_window_seconds=config.loss_window,
                                    kills_planned=config.kills, undrained=outcome.undrained))
    report: dict[str, Any] = {
        "mode": config.mode,
        "server": server.describe(),
        "appendonly": config.appendonly,
        "appendfsync": config.appendfsync,
        "slow_fsync_seconds": config.slow_fsync,
        "seed": seed,
        "jobs_planned": config.traffic.jobs,
        "sent": len(data.sent),
        **result.as_dict(),
        "allowed_loss_window_seconds": config.loss_window if config.mode == "powerloss" else 0,
        "dropped_unsynced_bytes": outcome.dropped_bytes,
        "redis_errors_seen": {"producers": outcome.producer_errors,
                              "workers": outcome.worker_errors},
        "elapsed_seconds": round(elapsed, 2),
        "traffic": asdict(config.traffic),
        "work_dir": str(layout.root),
    }
    return report
