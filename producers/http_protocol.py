"""uvicorn's HTTP protocol with a deadline on request headers: the seam with uvicorn's internals.

uvicorn bounds the wait between two requests on a kept-alive connection (`timeout_keep_alive`),
but not the wait for a request's headers: a client that connects and sends nothing, or half a
request line, holds its connection for as long as it likes. Each such connection also counts
towards `limit_concurrency` (`WEB_MAX_CONCURRENCY`), so a few hundred idle sockets would turn
every real request into a 503. This protocol closes a connection whose request headers are not
complete within `WEB_HEADER_TIMEOUT_SECONDS`, counted from the connection's start and from the
end of each response; the body then has its own deadline (`producers.body.read_body`).

The deadline is a time kept per connection, and one timer per connection that checks it when it
fires (and re-arms itself if the deadline has moved on): a request on a kept-alive connection
only writes a float, where arming and cancelling a uvloop timer per request cost ~3 us.

It subclasses uvicorn's `HttpToolsProtocol` (httptools, which uvicorn picks when installed, as
`uvicorn[standard]` does) and relies on: its `connection_made`, `connection_lost`,
`on_headers_complete` and `on_response_complete` methods, its `loop`, `transport` and `cycle`
attributes, and a cycle's `response_complete`; `body_buffered` reads a cycle's `more_body` and
`message_event`. tests/test_web_hardening.py checks each of them and names this module if
uvicorn changes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

_RESOLUTION = 0.001  # s: libuv's timers count milliseconds, and may fire this much early


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose request headers are too slow."""

    header_timeout = 5.0  # seconds; `header_deadline_protocol` makes a class with another

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: float | None = None  # loop time; None: no headers awaited
        self._timer: asyncio.TimerHandle | None = None  # fires at or before the deadline

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._header_deadline = None  # the timer stays: the next request will need it
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers (a pipelined one is let through in _expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_deadline = self.loop.time() + self.header_timeout
        if self._timer is None:  # a pending timer fires earlier and moves itself on
            self._timer = self.loop.call_at(self._header_deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._header_deadline is None:  # a request is in progress: no deadline to keep
            return
        if self._header_deadline - self.loop.time() > _RESOLUTION:  # armed again since
            self._timer = self.loop.call_at(self._header_deadline, self._expired)
            return
        self._header_deadline = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if not in_progress and not self.transport.is_closing():
            self.transport.close()


def body_buffered(receive: Callable[..., Any]) -> bool:
    """Whether `receive` is uvicorn's and its request's whole body has arrived already: the
    next `receive()` then returns it without waiting, so reading it needs no deadline."""
    cycle = getattr(receive, "__self__", None)
    return (isinstance(cycle, RequestResponseCycle) and not cycle.more_body
            and cycle.message_event.is_set())


def header_deadline_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for `uvicorn.run(http=...)` with a `seconds` deadline on headers."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
