"""`ACK_DURABILITY`: what a 200 to Slack promises about the job it acknowledges.

Pure data here (the settings validate it); the webhook's confirmation (`WAIT` / `WAITAOF`) is in
`producers/ack.py`, next to the enqueue path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FORMS = "memory, replicas:N, fsync or fsync+replicas:N"
_FORM = re.compile(r"memory|(?P<fsync>fsync)|(?:(?P<fsync_too>fsync)\+)?replicas:(?P<n>\d+)")
WAITAOF_SINCE = (7, 2, 0)  # the first Redis with WAITAOF


@dataclass(frozen=True)
class AckDurability:
    """`replicas`: how many replicas must have the job; `fsync`: the primary's AOF on disk too
    (and, with replicas, theirs)."""

    replicas: int = 0
    fsync: bool = False

    @classmethod
    def parse(cls, text: str) -> AckDurability:
        """From `memory`, `replicas:N`, `fsync` or `fsync+replicas:N`; ValueError otherwise."""
        match = _FORM.fullmatch(text.strip().lower())
        if not match:
            raise ValueError(f"must be one of {FORMS}, not {text!r}")
        replicas = int(match["n"] or 0)
        if match["n"] is not None and replicas < 1:
            raise ValueError("replicas:N needs N of 1 or more")
        return cls(replicas=replicas, fsync=bool(match["fsync"] or match["fsync_too"]))

    @property
    def waits(self) -> bool:
        """Whether a 200 waits for anything beyond the primary's reply."""
        return self.replicas > 0 or self.fsync

    def __str__(self) -> str:
        if not self.waits:
            return "memory"
        replicas = f"replicas:{self.replicas}" if self.replicas else ""
        return "+".join(part for part in ("fsync" if self.fsync else "", replicas) if part)
