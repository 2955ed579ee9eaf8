"""The dyno's fetch turn (worker/fetch_turn.py): an exclusive flock taken without blocking the
event loop. Two `FetchTurn`s on one file stand for two worker processes (each opens the file
itself, so their locks conflict as between processes). The dyno's behaviour with it:
tests/test_supervisor.py::test_a_trickle_goes_to_one_process_and_load_fills_both."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from worker.fetch_turn import FetchTurn


async def blocked(turn: FetchTurn, task: asyncio.Task[bool]) -> None:
    """Wait (bounded) until `turn`'s acquire is blocked on the other holder's lock."""
    deadline = asyncio.get_running_loop().time() + 10
    while not turn.waiting:
        assert asyncio.get_running_loop().time() < deadline, "acquire never blocked"
        await asyncio.sleep(0.01)
    assert not task.done()


async def test_a_released_turn_goes_to_the_waiting_process(tmp_path: Path) -> None:
    first, second = FetchTurn(tmp_path / "turn"), FetchTurn(tmp_path / "turn")
    assert await first.acquire() and first.held
    assert await first.acquire()  # held: returns at once
    waiting = asyncio.create_task(second.acquire())
    await blocked(second, waiting)  # the loop runs while the other process holds the turn
    first.release()
    assert await asyncio.wait_for(waiting, 10) is True
    assert second.held and not first.held


async def test_an_interrupted_wait_gives_a_late_grant_straight_back(tmp_path: Path) -> None:
    holder, interrupted = FetchTurn(tmp_path / "turn"), FetchTurn(tmp_path / "turn")
    assert await holder.acquire()
    waiting = asyncio.create_task(interrupted.acquire())
    await blocked(interrupted, waiting)
    interrupted.interrupt()  # a close or pause while waiting
    assert await asyncio.wait_for(waiting, 10) is False
    holder.release()  # the interrupted process's thread now gets the lock, and must return it
    third = FetchTurn(tmp_path / "turn")
    assert await asyncio.wait_for(third.acquire(), 10) is True
    assert not interrupted.held


async def test_a_cancelled_wait_leaves_no_turn_held(tmp_path: Path) -> None:
    holder, cancelled = FetchTurn(tmp_path / "turn"), FetchTurn(tmp_path / "turn")
    assert await holder.acquire()
    waiting = asyncio.create_task(cancelled.acquire())
    await blocked(cancelled, waiting)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    holder.release()
    assert await asyncio.wait_for(FetchTurn(tmp_path / "turn").acquire(), 10) is True


async def test_the_turn_of_a_dead_process_is_free(tmp_path: Path) -> None:
    """A worker process killed while holding the turn: the kernel releases its lock."""
    path = tmp_path / "turn"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import fcntl, os, sys, time; "
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)", str(path),
        stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"held"
        turn = FetchTurn(path)
        waiting = asyncio.create_task(turn.acquire())
        await blocked(turn, waiting)
        holder.kill()
        assert await asyncio.wait_for(waiting, 10) is True
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
