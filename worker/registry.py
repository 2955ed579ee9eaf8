"""The explicit registry of job handlers, keyed by job name (the Slack event type)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from worker.context import JobContext

__all__ = ["Handler", "HandlerRegistry", "JobContext"]

Handler = Callable[[JobContext], Awaitable[Any]]


class HandlerRegistry:
    """Maps job names to plain `async def handler(ctx)` functions."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: `@registry.register("app_mention")`. A name can be registered only once."""

        def add(handler: Handler) -> Handler:
            if name in self._handlers:
                raise ValueError(f"a handler for {name!r} is already registered")
            self._handlers[name] = handler
            return handler

        return add

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)
