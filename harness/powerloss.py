"""The `powerloss` fault: the server's data directory on a FUSE layer that can forget.

`PowerLossDisk.start()` mounts `harness.powerfs` (a separate process) over a backing
directory; `drop()` (after the server was SIGKILLed) discards every write that was not fsynced;
`stop()` unmounts. `unavailable_reason()` says why the mode cannot run on this machine, so tests
and the CLI skip it with that reason instead of failing.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import PowerLossUnavailable
from harness.powerfs import DROP_WAIT, send

UNMOUNT_GRACE = 2.0  # seconds the FUSE process gets to exit after the unmount (see `stop`)


def unavailable_reason() -> str | None:
    """None when a FUSE mount can work here, else the reason it cannot."""
    if not sys.platform.startswith("linux"):
        return f"FUSE power-loss layer is Linux only (this is {sys.platform})"
    if ctypes.util.find_library("fuse3") is None:
        return "libfuse3 is not installed (Debian/Ubuntu: apt-get install fuse3)"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (container without the FUSE device?)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse is not usable: {exc.strerror}"
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "fusermount3 is not on PATH (apt-get install fuse3) and we are not root"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"the mfusepy package cannot load: {exc} (pip install slackq[test])"
    return None


@dataclass
class PowerLossDisk:
    """One mounted power-loss layer: `mount` shows `backing` with a volatile write cache."""

    backing: Path
    mount: Path
    control_dir: Path
    mount_timeout: float = 15.0
    # Seconds added to every fsync: a slow disk (Redis then postpones AOF writes, see
    # docs/durability.md).
    fsync_delay: float = 0.0

    def __post_init__(self) -> None:
        self.control = self.control_dir / "powerfs.sock"
        self.log = self.control_dir / "powerfs.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise PowerLossUnavailable(reason)
        for directory in (self.backing, self.mount, self.control_dir):
            directory.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FUSE_LIBRARY_NAME": "fuse3"}
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "harness.powerfs", "--backing",
                 str(self.backing), "--mount", str(self.mount), "--control", str(self.control),
                 "--fsync-delay", str(self.fsync_delay)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self._wait_mounted()

    def _wait_mounted(self) -> None:
        deadline = time.monotonic() + self.mount_timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise PowerLossUnavailable(f"FUSE layer exited: {self._log_tail()}")
            if os.path.ismount(self.mount) and self._ping():
                return
            time.sleep(0.05)
        self.stop()
        raise PowerLossUnavailable(f"FUSE layer not mounted after {self.mount_timeout}s: "
                                   f"{self._log_tail()}")

    def _ping(self) -> bool:
        try:
            return send(self.control, "ping", timeout=2) == "pong"
        except OSError:
            return False

    def drop(self, wait: float = DROP_WAIT) -> int:
        """The power cut (call it once the server is dead: the layer waits up to `wait` seconds
        for its files to be released and refuses while any stays open); returns the bytes
        discarded."""
        reply = send(self.control, f"drop {wait}", timeout=wait + 10).split()
        if reply[:1] != ["dropped"]:
            raise PowerLossUnavailable(f"FUSE layer refused drop: {' '.join(reply)}")
        return int(reply[1])

    def aof_fsync_times(self) -> list[float]:
        """Wall-clock times (oldest first) at which an fsync made an AOF file's data durable."""
        reply = send(self.control, "fsyncs").split()
        if reply[:1] != ["fsyncs"]:
            raise PowerLossUnavailable(f"FUSE layer refused fsyncs: {' '.join(reply)}")
        return [float(at) for at in reply[1:]]

    def stop(self) -> None:
        """Unmount (what was written is kept) and reap the FUSE process.

        The layer writes its cache to the backing directory when the kernel releases the mount,
        and then exits. A mount namespace made while it was mounted (`ip netns exec`, as the HA
        tests run servers; this machine's mounts are private) keeps a copy of the mount until its
        processes exit, and with it the layer: after UNMOUNT_GRACE seconds it is told to write
        its cache (`sync`) and killed.
        """
        if os.path.ismount(self.mount):
            command = ["fusermount3", "-u"] if shutil.which("fusermount3") else ["umount"]
            result = subprocess.run([*command, str(self.mount)], capture_output=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True,
                               check=False)
        if self._process is not None:
            try:
                self._process.wait(timeout=UNMOUNT_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    send(self.control, "sync", timeout=10)
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-1500:] or "(empty log)"
        return "(no log)"
