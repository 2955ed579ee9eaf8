"""uvicorn's HTTP protocol with a deadline on request headers: the seam with uvicorn's internals.

uvicorn bounds the wait between two requests on a kept-alive connection (`timeout_keep_alive`),
but not the wait for a request's headers: a client that connects and sends nothing, or half a
request line, holds its connection for as long as it likes. Each such connection also counts
towards `limit_concurrency` (`WEB_MAX_CONCURRENCY`), so a few hundred idle sockets would turn
every real request into a 503. This protocol closes a connection whose request headers are not
complete within `WEB_HEADER_TIMEOUT_SECONDS`, counted from the connection's start and from the
end of each response; the body then has its own deadline (`producers.body.read_body`).

It subclasses uvicorn's `HttpToolsProtocol` (httptools, which uvicorn picks when installed, as
`uvicorn[standard]` does) and relies on: its `connection_made`, `connection_lost`,
`on_headers_complete` and `on_response_complete` methods, its `loop`, `transport` and `cycle`
attributes, and a cycle's `response_complete`. tests/test_web_hardening.py checks each of them
and names this module if uvicorn changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose request headers are too slow."""

    header_timeout = 5.0  # seconds; `header_deadline_protocol` makes a class with another

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers (a pipelined one is let through in _expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        in_progress = self.cycle is not None and not self.cycle.response_complete
        if not in_progress and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for `uvicorn.run(http=...)` with a `seconds` deadline on headers."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
