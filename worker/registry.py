"""The explicit registry of job handlers, keyed by job name (the Slack event type)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from structlog.typing import FilteringBoundLogger


@dataclass(frozen=True)
class JobContext:
    """What a handler gets: the job's name, id, attempt and data, a Slack client and a logger."""

    name: str
    job_id: str
    attempt: int
    data: dict[str, Any]
    slack: AsyncWebClient
    log: FilteringBoundLogger

    @property
    def event(self) -> dict[str, Any]:
        """The inner Slack event of an Events API envelope."""
        event = self.data.get("event")
        return event if isinstance(event, dict) else {}


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
