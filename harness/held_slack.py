"""The Slack stand-in with its replies held: Slack has the call, the worker waits for the answer.

`HeldSlack` records each call at once (Slack "accepted" it) and holds the HTTP reply until the
caller's `release()`, so a test or a harness campaign (`harness.e2e`) can break Redis, or kill
the worker, while jobs are mid-call. `tests/held_slack.py` re-exports it for the tests.
"""

from __future__ import annotations

import threading
from collections import Counter

from harness.slack_standin import Call, FakeSlack


class HeldSlack:
    """`FakeSlack` whose replies wait for `release()` (or `hold_seconds`, whichever is first)."""

    def __init__(self, hold_seconds: float = 120.0) -> None:
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.arrived: list[Call] = []  # every call as it arrives, answered or not
        self.hold_seconds = hold_seconds
        self.fake = FakeSlack(on_call=self._hold)

    def _hold(self, call: Call) -> None:
        with self._lock:
            self.arrived.append(call)
        self._released.wait(self.hold_seconds)

    def start(self) -> HeldSlack:
        self.fake.start()
        return self

    def stop(self) -> None:
        self.release()
        self.fake.stop()

    def release(self) -> None:
        """Answer every held call, and every later call at once."""
        self._released.set()

    def hold(self) -> None:
        """Hold the replies of the calls from now on."""
        self._released.clear()

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def posts_per_channel(self) -> Counter[str]:
        """How many `chat.postMessage` calls each channel got (each job posts to its own)."""
        return Counter(str(c.args.get("channel")) for c in self.fake.calls_to("chat.postMessage"))

    def posts_arrived(self) -> int:
        """`chat.postMessage` calls received so far, their replies held or not."""
        with self._lock:
            return sum(1 for call in self.arrived if call.method == "chat.postMessage")
