"""Signed `app_mention` events posted to the webhook at a set rate, and their tally at Slack.

Each event has its own id (`Ev0E2E000001`, ...) and its own message ts (`1700000000.000001`),
which the worker's reply carries as `thread_ts`: the Slack stand-in's `chat.postMessage` calls
say which events were replied to, and how often. The bodies are signed by
`slackq.sample_event` (the `slackq sample-event` command), so the harness signs exactly as the
smoke test does. Sending is bounded (`count` events at most) and paced from one clock: event i
leaves at `start + i / rate` whatever the answers of the earlier ones, as Slack's deliveries
do, so a slow or failing webhook does not slow the traffic down.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx

from slackq.sample_event import sample_envelope, signed_request

TEAM = "T0E2E0001"
CHANNEL = "C0E2E0001"
TIMEOUT_SECONDS = 10.0


def event_ts(index: int) -> str:
    """The mention's message ts: the reply's `thread_ts`, hence the reply's event."""
    return f"1700000000.{index:06d}"


def index_of(thread_ts: object) -> int | None:
    """The event index a reply's `thread_ts` names (None: not one of ours)."""
    text = str(thread_ts)
    head, _, tail = text.partition(".")
    return int(tail) if head == "1700000000" and tail.isdigit() else None


def signed_event(url: str, index: int, secret: str,
                 id_prefix: str = "Ev0E2E") -> tuple[bytes, dict[str, str]]:
    """Body and headers of event `index`, signed with `secret` as Slack signs."""
    envelope = sample_envelope(f"<@U0SLACKQBOT> e2e {index}", channel=CHANNEL, team_id=TEAM)
    envelope["event_id"] = f"{id_prefix}{index:06d}"
    envelope["event"]["ts"] = envelope["event"]["event_ts"] = event_ts(index)
    request = signed_request(url, envelope, secret)
    assert isinstance(request.data, bytes)
    return request.data, dict(request.header_items())


@dataclass(frozen=True)
class Sent:
    """One request: when it left (monotonic and wall clock), its status (0: no answer), and how
    long the answer took."""

    index: int
    at: float
    wall: float
    status: int
    seconds: float

    @property
    def answered_at(self) -> float:
        return self.at + self.seconds


@dataclass
class EventTraffic:
    """Up to `count` events at `rate` per second, from a thread of its own; `sent` fills in."""

    base: str
    secret: str
    rate: float
    count: int
    id_prefix: str = "Ev0E2E"
    first: int = 1  # the first event's index
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: float | None = None
    _thread: threading.Thread | None = None

    def start(self) -> EventTraffic:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True,
                                        name="e2e-traffic")
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        """Wait for the last answer (each request gives up after 10 s)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"traffic still running after {timeout}s")

    def finish(self, timeout: float = 30.0) -> None:
        """Send no more events; wait for the answers of those sent."""
        self.stop.set()
        self.join(timeout)

    async def _run(self) -> None:
        url = f"{self.base}/slack/events"
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=32)
        async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_SECONDS) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            self.started_at = time.monotonic()
            tasks: set[asyncio.Task[None]] = set()
            for index in range(self.first, self.first + self.count):
                delay = start + (index - self.first) / self.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the schedule, not a wait for an effect
                if self.stop.is_set():
                    break
                task = asyncio.create_task(self._send(client, url, index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)

    async def _send(self, client: httpx.AsyncClient, url: str, index: int) -> None:
        body, headers = signed_event(url, index, self.secret, self.id_prefix)
        at, wall = time.monotonic(), time.time()
        try:
            status = (await client.post(url, content=body, headers=headers)).status_code
        except httpx.HTTPError:
            status = 0
        self.sent.append(Sent(index, at, wall, status, time.monotonic() - at))

    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def acked(self, since: float = 0.0) -> list[int]:
        """Indexes answered 200 (sent at or after `since`, monotonic)."""
        return sorted(s.index for s in list(self.sent) if s.status == 200 and s.at >= since)


def unavailable_seconds(sent: Iterable[Sent]) -> float:
    """How long the webhook refused: each run of non-200 answers (in sending order) counts
    from its first request's departure to the departure of the next request answered 200 (or
    the run's last answer, when none came after)."""
    total, run_start, run_end = 0.0, None, 0.0
    for request in sorted(sent, key=lambda s: s.at):
        if request.status != 200:
            run_start = request.at if run_start is None else run_start
            run_end = request.answered_at
        elif run_start is not None:
            total += request.at - run_start
            run_start = None
    if run_start is not None:
        total += run_end - run_start
    return total


@dataclass(frozen=True)
class Tally:
    """What the webhook answered and what Slack received, per event."""

    sent: int
    acked: int
    lost: list[int]  # acked (200), never replied to
    duplicates: int  # replies beyond the first, over all events
    doubled: list[int]  # the events replied to more than once
    non_200: int
    replied_not_acked: int  # refused (or unanswered), stored anyway: Slack's retry would dedup
    unavailable_s: float

    def row(self) -> dict[str, object]:
        return {"sent": self.sent, "acked": self.acked, "lost": len(self.lost),
                "duplicates": self.duplicates, "non_200": self.non_200,
                "replied_not_acked": self.replied_not_acked,
                "unavailable_s": round(self.unavailable_s, 2)}


def tally(sent: list[Sent], reply_thread_ts: Iterable[object],
          indexes: range | None = None) -> Tally:
    """Compare the answers with the replies (the `thread_ts` of each `chat.postMessage`);
    with `indexes`, only the replies to those events count (one campaign of a series)."""
    replies = Counter(index for index in map(index_of, reply_thread_ts)
                      if index is not None and (indexes is None or index in indexes))
    acked = {s.index for s in sent if s.status == 200}
    return Tally(
        sent=len(sent), acked=len(acked),
        lost=sorted(acked - set(replies)),
        duplicates=sum(count - 1 for count in replies.values()),
        doubled=sorted(index for index, count in replies.items() if count > 1),
        non_200=sum(1 for s in sent if s.status != 200),
        replied_not_acked=len(set(replies) - acked),
        unavailable_s=unavailable_seconds(sent),
    )
