"""Quick durability campaigns (CI): kill the server mid-run and check what it kept.

Each campaign runs a few thousand jobs over ~8 s with two kills. The controls must be flagged
as failures every run, which proves these tests can fail; the checker test deletes one effect
from a real ledger and expects the verdict to flip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.campaign import CampaignConfig, run_campaign
from harness.powerloss import PowerLossDisk, unavailable_reason
from harness.servers import ContainerServer, docker_unavailable_reason
from harness.traffic import TrafficConfig
from slackq.embedded import PROJECT_ROOT
from tests.prerequisites import requires

pytestmark = pytest.mark.durability

QUICK = TrafficConfig(jobs=2000, duration=8.0)
SEED = 20261125
POWERLOSS_UNAVAILABLE = unavailable_reason()
needs_fuse = requires("the power-loss layer (FUSE)", POWERLOSS_UNAVAILABLE)


MEMORY = Path("/dev/shm")


@contextlib.contextmanager
def memory_backed(keep: Path, kept: tuple[str, ...] = ("ledger", "server.log"),
                  ) -> Iterator[Path]:
    """A campaign directory in RAM (tmpfs); its ledger and server log (`kept`) are copied to
    `keep`.

    A shared CI disk makes the background fsync slow now and then. With `everysec` Redis then
    postpones its AOF write() (up to 2 s) but still replies, so a SIGKILL in that moment loses
    acked writes: a real Redis behaviour (`test_slow_disk_...` shows it on purpose), but not the
    one these campaigns measure. On tmpfs fsync returns at once and a SIGKILL keeps exactly what
    a crash on a healthy disk keeps (written data lives in the page cache either way).
    """
    if not MEMORY.is_dir():
        yield keep
        return
    root = Path(tempfile.mkdtemp(prefix="slackq-durability-", dir=MEMORY))
    try:
        yield root
    finally:
        for name in kept:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, keep / name, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy2(source, keep / name)
        shutil.rmtree(root, ignore_errors=True)


def campaign(work_dir: Path, **overrides: Any) -> dict[str, Any]:
    config = CampaignConfig(kills=2, seed=SEED, traffic=QUICK, work_dir=work_dir, **overrides)
    return asyncio.run(run_campaign(config))


def diagnosis(report: dict[str, Any]) -> dict[str, Any]:
    """What a failed powerloss run needs to be understood (CI keeps no ledger)."""
    names = ("reasons", "lost", "lost_ids", "loss_window_seconds", "kill_windows_seconds",
             "dropped_unsynced_bytes", "redis_errors_seen")
    return {name: report.get(name) for name in names}


def assert_tested_something(report: dict[str, Any]) -> None:
    assert report["kills"] == 2
    # Producers are paced over the duration; a busy machine (or `always`) may fall behind a bit.
    assert report["acknowledged"] >= QUICK.jobs * 0.5
    assert report["phantoms"] == 0


@pytest.fixture(scope="module")
def crash_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with memory_backed(tmp_path_factory.mktemp("crash")) as work_dir:
        yield campaign(work_dir, mode="crash")


def test_crash_loses_no_acknowledged_job(crash_report: dict[str, Any]) -> None:
    assert_tested_something(crash_report)
    assert crash_report["server"]["server"] in {"redis", "valkey"}
    assert (crash_report["verdict"], crash_report["lost"]) == ("pass", 0)
    assert crash_report["max_ready_seconds"] is not None


def test_checker_catches_one_deleted_effect(crash_report: dict[str, Any]) -> None:
    ledger = Path(crash_report["work_dir"]) / "ledger"
    lines = (ledger / "worker.jsonl").read_text().splitlines()
    effects = [json.loads(line) for line in lines if '"effect"' in line]
    counts: dict[str, int] = {}
    for effect in effects:
        counts[effect["id"]] = counts.get(effect["id"], 0) + 1
    victim = next(job for job, count in counts.items() if count == 1)
    (ledger / "worker.jsonl").write_text(
        "".join(line + "\n" for line in lines if f'"id":"{victim}"' not in line))

    result = subprocess.run(
        [sys.executable, "-m", "harness", "check", str(ledger), "--mode", "crash"],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60, check=False)
    verdict = json.loads(result.stdout)
    assert result.returncode == 1
    assert (verdict["verdict"], verdict["lost"], verdict["lost_ids"]) == ("fail", 1, [victim])


def test_crash_control_without_aof_is_flagged(tmp_path: Path) -> None:
    """`appendonly no`: the CLI must report the loss and exit non-zero."""
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "harness", "--mode", "crash", "--appendonly", "no",
         "--kills", "2", "--jobs", str(QUICK.jobs), "--duration", str(QUICK.duration),
         "--seed", str(SEED), "--report", str(report_path), "--work-dir", str(tmp_path / "w")],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=110, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert_tested_something(report)
    assert report["verdict"] == "fail"
    assert report["lost"] > 0
    assert "verdict: FAIL" in result.stdout


@needs_fuse
def test_powerloss_everysec_loses_only_the_last_second(tmp_path: Path) -> None:
    with memory_backed(tmp_path) as work_dir:
        report = campaign(work_dir, mode="powerloss")
    assert_tested_something(report)
    assert report["dropped_unsynced_bytes"] > 0
    assert (report["verdict"], report["lost_outside_window"]) == ("pass", 0), diagnosis(report)


@needs_fuse
def test_powerloss_control_appendfsync_no_is_flagged(tmp_path: Path) -> None:
    report = campaign(tmp_path, mode="powerloss", appendfsync="no")
    assert_tested_something(report)
    assert report["verdict"] == "fail"
    assert report["lost_outside_window"] > 0


@needs_fuse
def test_powerloss_appendfsync_always_loses_nothing(tmp_path: Path) -> None:
    report = campaign(tmp_path, mode="powerloss", appendfsync="always")
    assert_tested_something(report)
    assert (report["verdict"], report["lost"]) == ("pass", 0), report["reasons"]


@needs_fuse
def test_slow_disk_makes_even_a_crash_lose_acknowledged_jobs(tmp_path: Path) -> None:
    """fsync taking 3 s: Redis postpones its AOF write() but still replies, so SIGKILL loses."""
    report = campaign(tmp_path, mode="crash", slow_fsync=3.0)
    assert_tested_something(report)
    assert report["verdict"] == "fail"
    assert report["lost"] > 0


@needs_fuse
def test_power_cut_keeps_synced_bytes_and_drops_the_rest(tmp_path: Path) -> None:
    disk = PowerLossDisk(backing=tmp_path / "disk", mount=tmp_path / "mnt",
                         control_dir=tmp_path)
    disk.start()
    try:
        path = tmp_path / "mnt" / "appendonly.aof"
        with path.open("ab") as handle:
            handle.write(b"A" * 5000)
            handle.flush()
            import os

            os.fdatasync(handle.fileno())
            handle.write(b"B" * 3000)
            handle.flush()
            assert path.stat().st_size == 8000
            assert (tmp_path / "disk" / "appendonly.aof").stat().st_size == 5000
        assert disk.drop() == 3000
        assert path.read_bytes() == b"A" * 5000
        with path.open("ab") as handle:
            handle.write(b"C" * 10)
        assert path.read_bytes() == b"A" * 5000 + b"C" * 10
    finally:
        disk.stop()
    # A clean unmount is not a power cut: the unsynced Cs reach the backing directory.
    assert (tmp_path / "disk" / "appendonly.aof").read_bytes().endswith(b"C" * 10)


@pytest.mark.skipif(docker_unavailable_reason() is not None,
                    reason=f"docker backend: {docker_unavailable_reason()}")
def test_docker_backend_comes_back_on_the_same_port() -> None:
    server = ContainerServer()
    try:
        server.start()
        url = server.url
        server.kill()
        server.start()
        assert server.url == url
    finally:
        server.stop()
