"""Waiting on a condition with a deadline: the tests' only way to wait for an effect."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def wait_until(check: Callable[[], bool | Awaitable[bool]], within: float = 20.0,
                     what: str = "condition") -> float:
    """Poll `check` (plain or async) until true; return the seconds it took.

    Fails naming `what` once `within` seconds have passed.
    """
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.02)


def wait_until_sync(check: Callable[[], bool], within: float = 20.0,
                    what: str = "condition") -> float:
    """The same for synchronous tests."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started
