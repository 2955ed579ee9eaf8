"""The dyno's fetch turn: one worker process at a time waits for new jobs.

BullMQ's `moveToActive` script adds the queue's marker again after every job it hands out (so
that another worker looks for the next one). Every worker process blocked on that marker
(`BZPOPMIN`) is a candidate for it, and Redis gives it to the one blocked longest: in a dyno of
two processes at a trickle, the process that did not get the job was woken for every job the
other took, only to find the queue empty (`bench/README.md`, trickle: ~1 extra wake-up per job,
the dyno 1.1-1.3x one process's CPU per job). Upstream-worthy: add the marker only when jobs
are left to fetch.

The supervisor creates a lock file and hands its path to its worker processes
(`WORKER_FETCH_TURN_FILE`). A process takes the turn (an exclusive `flock`) before it waits for a
job and keeps it while it has free slots; it gives the turn up once all its slots are busy, or
when it closes. So at a trickle one process takes every job and the other sleeps; under load
both fill their slots. The kernel releases the lock of a process that dies. Completions that
fetch the next job (`FetchNextWorker`) need no turn: they do not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from pathlib import Path


class FetchTurn:
    """An exclusive `flock` on `path`, taken without blocking the event loop.

    `acquire` returns at once when the turn is held or free; otherwise one thread blocks in
    `flock` and hands the turn to the loop. `interrupt` ends a pending `acquire` (close, pause)
    without the turn; a grant that then arrives with nobody waiting is given straight back.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.held = False
        self._thread_pending = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> bool:
        """A thread is blocked in `flock` for this process (the other one holds the turn)."""
        return self._thread_pending

    async def acquire(self) -> bool:
        """Take the turn; False when `interrupt` ended the wait first."""
        if self.held:
            return True
        if self._thread_pending:  # its grant comes first: a second flock would share its lock
            return await self._wait_for_grant()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return await self._wait_for_grant()
        self.held = True
        return True

    async def _wait_for_grant(self) -> bool:
        loop = asyncio.get_running_loop()
        if not self._thread_pending:
            self._thread_pending = True
            threading.Thread(target=self._block, args=(loop,), name="fetch-turn",
                             daemon=True).start()
        if self._waiter is None or self._waiter.done():
            self._waiter = loop.create_future()
        waiter = self._waiter
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            if not waiter.done():  # nobody waits any more: a later grant goes straight back
                waiter.set_result(None)
            raise
        return self.held

    def _block(self, loop: asyncio.AbstractEventLoop) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is exiting
            loop.call_soon_threadsafe(self._granted)

    def _granted(self) -> None:
        self._thread_pending = False
        if self.held:
            return
        if self._waiter is None or self._waiter.done():
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            return
        self.held = True
        self._waiter.set_result(None)

    def release(self) -> None:
        if self.held:
            self.held = False
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def interrupt(self) -> None:
        """Give the turn up and end a pending `acquire` without it."""
        self.release()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
