"""A FUSE passthrough file system that loses unsynced writes on command (LazyFS's method).

Mounted over a backing directory, it passes metadata operations (create, rename, unlink,
mkdir, ...) straight through, but keeps written data in its own page cache until the file is
fsynced. `drop_unsynced()` discards that cache: the backing directory then holds exactly what a
disk would hold after a power cut. Run it as a process (`python -m harness.powerfs`);
`harness.powerloss.PowerLossDisk` starts it and talks to its control socket.

Simplifications, all in the direction LazyFS takes: metadata is durable at once (a journaling
file system commits it within seconds, and Redis fsyncs data and directories around its renames
anyway); the kernel's own page cache is bypassed (`direct_io`, zero attribute timeouts) so that
after a drop nothing stale is served.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = 4096
# How many AOF fsync completion times the layer remembers (a few minutes of `everysec`).
FSYNC_HISTORY = 256
# How long a power cut waits for the files of the SIGKILLed server to be released.
DROP_WAIT = 10.0
STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns",
               "st_mtime_ns", "st_ctime_ns", "st_blocks", "st_blksize", "st_rdev")


@dataclass
class Dirty:
    """Unsynced state of one inode: its own descriptor, logical size and dirty pages."""

    fd: int
    size: int
    # Backing bytes at or beyond this offset are stale (a cached truncate cut them off).
    backing_limit: int
    pages: dict[int, bytearray] = field(default_factory=dict)
    unsynced_bytes: int = 0


class PageCache:
    """Dirty pages per inode (dev, ino); all methods are called with the lock held.

    Every operation that looks at the backing file and at the cache must do both under the
    lock: a flush (fsync) rewrites the backing file while holding it, so a backing size read
    outside the lock can be a half-flushed one with the cache entry already gone.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Signalled (with `lock`) when a file handle is released: a power cut waits for them.
        self.released = threading.Condition(self.lock)
        self.inodes: dict[tuple[int, int], Dirty] = {}
        self.open_handles: set[int] = set()
        # Wall-clock times at which an fsync of an `.aof` file made its data durable: what the
        # campaign needs to measure the window a power cut can lose (`harness.chaos`).
        self.aof_fsyncs: deque[float] = deque(maxlen=FSYNC_HISTORY)

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    def dirty(self, fd: int) -> Dirty:
        st = os.fstat(fd)
        entry = self.inodes.get(self.key(st))
        if entry is None:
            entry = Dirty(fd=os.dup(fd), size=st.st_size, backing_limit=st.st_size)
            self.inodes[self.key(st)] = entry
        return entry

    def lookup(self, st: os.stat_result) -> Dirty | None:
        return self.inodes.get(self.key(st))

    def _page(self, entry: Dirty, number: int) -> bytearray:
        page = entry.pages.get(number)
        if page is None:
            page = bytearray(PAGE)
            start = number * PAGE
            valid = max(0, min(PAGE, entry.backing_limit - start, entry.size - start))
            if valid:
                base = os.pread(entry.fd, valid, start)
                page[:len(base)] = base
            entry.pages[number] = page
        return page

    def write(self, fd: int, data: bytes, offset: int) -> int:
        entry = self.dirty(fd)
        view = memoryview(data)
        position = offset
        while view:
            number, in_page = divmod(position, PAGE)
            count = min(PAGE - in_page, len(view))
            self._page(entry, number)[in_page:in_page + count] = view[:count]
            view = view[count:]
            position += count
        entry.size = max(entry.size, offset + len(data))
        entry.unsynced_bytes += len(data)
        return len(data)

    def read(self, entry: Dirty, size: int, offset: int) -> bytes:
        end = min(offset + size, entry.size)
        out = bytearray()
        position = offset
        while position < end:
            number, in_page = divmod(position, PAGE)
            count = min(PAGE - in_page, end - position)
            page = entry.pages.get(number)
            if page is not None:
                out += page[in_page:in_page + count]
            else:
                valid = max(0, min(count, entry.backing_limit - position))
                chunk = os.pread(entry.fd, valid, position) if valid else b""
                out += chunk + bytes(count - len(chunk))
            position += count
        return bytes(out)

    def truncate(self, fd: int, length: int) -> None:
        entry = self.dirty(fd)
        entry.size = length
        entry.backing_limit = min(entry.backing_limit, length)
        last, rest = divmod(length, PAGE)
        for number in [n for n in entry.pages if n > last or (n == last and rest == 0)]:
            del entry.pages[number]
        if rest and last in entry.pages:
            entry.pages[last][rest:] = bytes(PAGE - rest)
        entry.unsynced_bytes += 1  # a pending truncate counts as one unsynced byte

    def flush(self, key: tuple[int, int]) -> None:
        """Make an inode's cached state durable: write it to the backing file."""
        entry = self.inodes.pop(key, None)
        if entry is None:
            return
        try:
            os.ftruncate(entry.fd, entry.backing_limit)
            for number, page in sorted(entry.pages.items()):
                start = number * PAGE
                if start < entry.size:
                    os.pwrite(entry.fd, bytes(page[:min(PAGE, entry.size - start)]), start)
            os.ftruncate(entry.fd, entry.size)
        finally:
            os.close(entry.fd)

    def forget(self, key: tuple[int, int]) -> None:
        entry = self.inodes.pop(key, None)
        if entry is not None:
            os.close(entry.fd)

    def drop_all(self) -> tuple[int, int]:
        """The power cut: forget every unsynced write. Returns (bytes, files) dropped."""
        dropped = sum(entry.unsynced_bytes for entry in self.inodes.values())
        files = len(self.inodes)
        for key in list(self.inodes):
            self.forget(key)
        return dropped, files

    def flush_all(self) -> None:
        for key in list(self.inodes):
            self.flush(key)

    def drop_when_closed(self, timeout: float) -> str:
        """The power cut, once no file on the mount is open (call with the lock held).

        A power cut stops every writer. Dropping under a process that still has a file open
        leaves the kernel's idea of the file (its size, where O_APPEND writes go) ahead of
        the file: its next write lands past the end and leaves a hole of zeros in the middle,
        a corruption no disk produces. So the caller kills the writers first; a SIGKILLed
        process's files are released asynchronously, hence the wait.
        """
        deadline = time.monotonic() + timeout
        while self.open_handles:
            left = deadline - time.monotonic()
            if left <= 0:
                return (f"error {len(self.open_handles)} file(s) still open on the mount: "
                        "kill their processes before the power cut")
            self.released.wait(left)
        dropped, files = self.drop_all()
        return f"dropped {dropped} {files}"


def _operations_base() -> type:
    from mfusepy import Operations

    return Operations  # type: ignore[no-any-return]


def build_operations(backing: Path, cache: PageCache, fsync_delay: float = 0.0) -> Any:
    """The mfusepy Operations object (mfusepy is imported only where FUSE is used).

    `fsync_delay` simulates a slow disk: every fsync takes that many extra seconds.
    """
    # mfusepy turns an OSError raised by an operation into -errno for the kernel.
    base = _operations_base()

    class PowerLossOperations(base):  # type: ignore[misc, valid-type]
        use_ns = True

        def __init__(self) -> None:
            self.root = str(backing)

        def _full(self, path: str) -> str:
            return self.root + path

        def init_with_config(self, _conn: Any, config: Any) -> None:
            if config is not None:
                config.entry_timeout = 0.0
                config.attr_timeout = 0.0
                config.negative_timeout = 0.0
                config.direct_io = 1
                config.hard_remove = 1
                config.kernel_cache = 0

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            # The stat under the lock (PageCache): the kernel takes this size as the file's,
            # and sends the next O_APPEND write there; a half-flushed size would make that
            # write overwrite acknowledged data (issue found by the e2e campaigns).
            with cache.lock:
                st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
                attrs = {name: getattr(st, name) for name in STAT_FIELDS}
                entry = cache.lookup(st)
                if entry is not None:
                    attrs["st_size"] = entry.size
            return attrs

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._full(path), amode):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            return 0

        def readdir(self, path: str, _fh: int) -> list[str]:
            return [".", "..", *os.listdir(self._full(path))]

        def readlink(self, path: str) -> str:
            return str(os.readlink(self._full(path)))

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(self._full(path), mode)
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(self._full(path))
            return 0

        def unlink(self, path: str) -> int:
            full = self._full(path)
            st = os.lstat(full)
            os.unlink(full)
            if st.st_nlink <= 1:
                with cache.lock:
                    cache.forget(PageCache.key(st))
            return 0

        def rename(self, old: str, new: str) -> int:
            replaced = None
            try:
                replaced = os.lstat(self._full(new))
            except FileNotFoundError:
                pass
            os.rename(self._full(old), self._full(new))
            if replaced is not None and replaced.st_nlink <= 1:
                with cache.lock:
                    cache.forget(PageCache.key(replaced))
            return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._full(source), self._full(target))
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._full(target))
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._full(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._full(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._full(path))
            else:
                os.utime(self._full(path), ns=times)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self._full(path))
            return {name: getattr(st, name) for name in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")}

        def _open(self, path: str, flags: int, mode: int = 0o644) -> int:
            # The kernel passes offsets for O_APPEND writes; pwrite on an O_APPEND descriptor
            # would ignore them. A truncating open is cached like any truncate.
            backing_flags = (flags & ~(os.O_APPEND | os.O_TRUNC | os.O_ACCMODE)) | os.O_RDWR
            fd = int(os.open(self._full(path), backing_flags, mode))
            with cache.lock:
                cache.open_handles.add(fd)
                if flags & os.O_TRUNC:
                    cache.truncate(fd, 0)
            return fd

        def open(self, path: str, flags: int) -> int:
            return self._open(path, flags)

        def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
            return self._open(path, flags | os.O_CREAT, mode)

        def read(self, _path: str, size: int, offset: int, fh: int) -> bytes:
            with cache.lock:
                entry = cache.lookup(os.fstat(fh))
                if entry is not None:
                    return cache.read(entry, size, offset)
            return bytes(os.pread(fh, size, offset))

        def write(self, _path: str, data: bytes, offset: int, fh: int) -> int:
            with cache.lock:
                return cache.write(fh, data, offset)

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            fd = fh if fh is not None else int(os.open(self._full(path),
                                                                     os.O_RDWR))
            try:
                with cache.lock:
                    cache.truncate(fd, length)
            finally:
                if fh is None:
                    os.close(fd)
            return 0

        def fsync(self, path: str, _datasync: int, fh: int) -> int:
            if fsync_delay:
                time.sleep(fsync_delay)
            with cache.lock:
                cache.flush(PageCache.key(os.fstat(fh)))
                if path.endswith(".aof"):
                    cache.aof_fsyncs.append(time.time())
            # What reached the backing file survives the simulated power cut; the real
            # fdatasync only gives fsync its real cost on this machine's disk.
            os.fdatasync(fh)
            return 0

        def fsyncdir(self, _path: str, _datasync: int, _fh: int) -> int:
            return 0

        def flush(self, _path: str, _fh: int) -> int:
            return 0

        def release(self, _path: str, fh: int) -> int:
            with cache.lock:
                cache.open_handles.discard(fh)
                os.close(fh)
                cache.released.notify_all()
            return 0

        def destroy(self, _path: str) -> None:
            # A clean unmount is not a power cut: what was written is kept.
            with cache.lock:
                cache.flush_all()

    return PowerLossOperations()


class _Control(socketserver.StreamRequestHandler):
    """One command per line: `ping`, `drop [SECONDS]` (the power cut: waits up to SECONDS,
    DROP_WAIT by default, for the files on the mount to be closed, and refuses while any is
    open), `sync` (flush everything), `fsyncs` (the remembered AOF fsync times)."""

    def handle(self) -> None:
        cache: PageCache = self.server.cache  # type: ignore[attr-defined]
        for raw in self.rfile:
            command, *args = raw.decode().split() or [""]
            with cache.lock:
                if command == "ping":
                    reply = "pong"
                elif command == "drop":
                    reply = cache.drop_when_closed(float(args[0]) if args else DROP_WAIT)
                elif command == "sync":
                    cache.flush_all()
                    reply = "synced"
                elif command == "fsyncs":
                    reply = " ".join(["fsyncs", *(f"{at:.6f}" for at in cache.aof_fsyncs)])
                else:
                    reply = f"error unknown command {command!r}"
            self.wfile.write(reply.encode() + b"\n")
            self.wfile.flush()


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def serve(backing: Path, mount: Path, control: Path, fsync_delay: float = 0.0) -> None:
    """Mount (foreground, until unmounted) and answer control commands on a Unix socket."""
    from mfusepy import FUSE

    cache = PageCache()
    if control.exists():
        control.unlink()
    server = _ControlServer(str(control), _Control)
    server.cache = cache  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    try:
        FUSE(build_operations(backing, cache, fsync_delay), str(mount), foreground=True,
             fsname="slackq-powerloss", default_permissions=True)
    finally:
        server.shutdown()
        server.server_close()


def send(control: Path, command: str, timeout: float = 10.0) -> str:
    """Send one control command and return the reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(control))
        sock.sendall(command.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.powerfs")
    parser.add_argument("--backing", type=Path, required=True)
    parser.add_argument("--mount", type=Path, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--fsync-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    serve(args.backing, args.mount, args.control, args.fsync_delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
