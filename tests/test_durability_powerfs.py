"""The power-loss layer without a mount: its page cache, and why it would be skipped."""

from __future__ import annotations

import ctypes.util
import os
from pathlib import Path

import pytest

from harness import powerloss
from harness.powerfs import PageCache

pytestmark = pytest.mark.durability


def test_powerloss_is_skipped_with_a_reason_when_libfuse3_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    reason = powerloss.unavailable_reason()
    assert reason is not None and "libfuse3" in reason


def test_page_cache_keeps_unsynced_writes_until_fsync_and_forgets_them_on_a_power_cut(
    tmp_path: Path,
) -> None:
    """The power-loss layer's cache on its own (no FUSE needed): what fsync makes durable."""
    backing = tmp_path / "file"
    backing.write_bytes(b"x" * 6000)
    cache = PageCache()
    fd = os.open(backing, os.O_RDWR)
    try:
        cache.write(fd, b"y" * 3000, 5000)
        cache.truncate(fd, 7000)
        entry = cache.lookup(os.fstat(fd))
        assert entry is not None and entry.size == 7000
        assert cache.read(entry, 10_000, 0) == b"x" * 5000 + b"y" * 2000
        assert backing.read_bytes() == b"x" * 6000
        cache.flush(PageCache.key(os.fstat(fd)))
        assert backing.read_bytes() == b"x" * 5000 + b"y" * 2000

        cache.truncate(fd, 100)
        cache.write(fd, b"z", 200)
        entry = cache.lookup(os.fstat(fd))
        assert entry is not None
        assert cache.read(entry, 1000, 0) == b"x" * 100 + bytes(100) + b"z"
        assert cache.drop_all() == (2, 1)
        assert cache.lookup(os.fstat(fd)) is None
        assert backing.read_bytes() == b"x" * 5000 + b"y" * 2000
    finally:
        os.close(fd)
