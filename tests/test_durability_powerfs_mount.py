"""The power-loss layer mounted (FUSE), under a real redis-server: what it must never do.

A crash (SIGKILL, no power cut) must keep everything Redis wrote: the layer holds written data
like a page cache. A power cut may cut the unsynced tail of a file, never corrupt its middle
(Redis 7 loads a cut tail with `aof-load-truncated yes`, but refuses a broken middle with
"Bad file format"). Two ways the layer did corrupt the middle are pinned here: a `stat` racing
an fsync (the kernel then sent the next O_APPEND write into acknowledged data), and a power cut
under a process that still had the file open (its next write left a hole of zeros).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.errors import PowerLossUnavailable
from harness.powerloss import PowerLossDisk, unavailable_reason
from slackq.embedded import RedisProcess
from tests.prerequisites import requires

pytestmark = [pytest.mark.durability,
              requires("the power-loss layer (FUSE)", unavailable_reason())]

MEMORY = Path("/dev/shm")
PAYLOAD = b"p" * 8192


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerLossDisk]:
    """The layer over a directory in RAM: a slow shared disk must not make fsync slow (a slow
    fsync makes Redis postpone its writes, docs/durability.md), only the layer is under test."""
    root = Path(tempfile.mkdtemp(dir=MEMORY)) if MEMORY.is_dir() else tmp_path
    layer = PowerLossDisk(root / "backing", root / "mnt", root / "ctl")
    layer.start()
    try:
        yield layer
    finally:
        layer.stop()
        if root != tmp_path:
            shutil.rmtree(root, ignore_errors=True)


def test_appends_land_at_the_end_while_the_file_is_statted_and_fsynced(
    disk: PowerLossDisk,
) -> None:
    """The kernel takes a stat's size as the file's and sends the next O_APPEND write there: a
    stat answered in the middle of an fsync's flush must not report a smaller size."""
    path = disk.mount / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stop = threading.Event()
    helpers = [threading.Thread(target=_fsync_until, args=(fd, stop)),
               threading.Thread(target=_stat_until, args=(path, stop))]
    records = 0
    try:
        for helper in helpers:
            helper.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            os.write(fd, b"%09d\n" % records)
            records += 1
    finally:
        stop.set()
        for helper in helpers:
            helper.join()
        os.close(fd)
    written = path.read_bytes()
    assert written == b"".join(b"%09d\n" % n for n in range(records)), \
        f"{records} records appended, the file holds {len(written) // 10}"


def _fsync_until(fd: int, stop: threading.Event) -> None:
    while not stop.is_set():
        os.fsync(fd)


def test_a_crash_keeps_every_acknowledged_write_while_the_files_are_statted(
    disk: PowerLossDisk, tmp_path: Path,
) -> None:
    """Redis appends while something (an operator's `ls -l`, a backup agent) stats its files;
    then SIGKILL, no power cut: the restart must load the AOF and find every acknowledged write.
    """
    # `always`: an fsync per write, so that many flushes meet the stats (everysec: one a second).
    server = RedisProcess(data_dir=disk.mount, log_file=tmp_path / "redis.log",
                          overrides={"appendfsync": "always"})
    server.start()
    stop = threading.Event()
    statter = threading.Thread(target=_stat_until, args=(disk.mount / "appendonlydir", stop))
    acked = 0
    try:
        with redis.Redis(port=server.port) as client:
            statter.start()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                client.rpush("acked", acked, PAYLOAD)
                acked += 1
        server.kill()
        stop.set()
        statter.join()
        server.start(ready_timeout=30)  # "Bad file format" ends Redis here
        with redis.Redis(port=server.port) as client:
            stored = client.lrange("acked", 0, -1)[::2]
    finally:
        stop.set()
        server.kill()
    assert [int(value) for value in stored[:acked]] == list(range(acked))


def _stat_until(path: Path, stop: threading.Event) -> None:
    """Stat `path` (a file, or every file in a directory) until `stop`: as an operator's
    `ls -l` or a backup agent would, only without pause."""
    while not stop.is_set():
        for each in path.iterdir() if path.is_dir() else [path]:
            with contextlib.suppress(OSError):
                each.stat()


def test_a_power_cut_waits_for_the_writers_to_die(disk: PowerLossDisk) -> None:
    """A power cut stops every writer: the layer refuses to drop under a file still open (the
    writer would go on at its old end of file, past the cut one, and leave zeros between)."""
    path = disk.mount / "file"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, b"synced\n")
        os.fsync(fd)
        os.write(fd, b"never synced\n")
        with pytest.raises(PowerLossUnavailable, match="still open"):
            disk.drop(wait=0.5)
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert disk.drop() == 0 + len(b"never synced\nafter\n")
    assert path.read_bytes() == b"synced\n"
