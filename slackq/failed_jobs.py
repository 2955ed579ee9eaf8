"""Failed jobs as the `slackq` CLI shows them, read without trusting what a job holds.

A job's hash can hold anything: another producer (a Node service, a script, an attacker with
write access) may have stored data that is not JSON, a name with terminal escape codes or
newlines, a timestamp that is not a number. The port's `Queue.getJobs` parses every job with
`Job.fromJSON` and one such job fails the whole listing. Here each job is read on its own from
BullMQ's documented key layout (`<prefix>:<queue>:failed`, a sorted set by finish time, and the
job hash `<prefix>:<queue>:<id>`), each field checked; a job that does not parse keeps its row,
with its problems named. `shown` makes any text safe to print on a terminal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from slackq.logging import redact

MAX_SHOWN_CHARS = 300


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` for a terminal: every character that is not printable (escape codes, newlines,
    bidi overrides) as a Python escape, at most `limit` characters."""
    out = "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text[:limit])
    return out + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class FailedJob:
    """One failed job's row; `problems` names each field that did not parse."""

    id: str
    name: str | None = None
    attempts: int | None = None
    failed_at: str | None = None
    reason: str = ""
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """For `--json` (JSON escapes control characters itself: values stay as stored)."""
        return {"id": self.id, "name": self.name, "attempts": self.attempts,
                "failed_at": self.failed_at, "reason": self.reason, "problems": self.problems}

    def line(self) -> str:
        """One line for a terminal, every value escaped."""
        text = (f"{shown(self.id)}  {shown(self.name) if self.name is not None else '?'}  "
                f"attempts={'?' if self.attempts is None else self.attempts}  "
                f"{self.failed_at or '?'}  {shown(self.reason)}")
        if self.problems:
            text += f"  [unreadable job: {'; '.join(self.problems)}]"
        return text


def _int_field(raw: dict[str, str], names: tuple[str, ...], problems: list[str]) -> int | None:
    value = next((raw[name] for name in names if raw.get(name)), None)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        problems.append(f"{names[0]} is not a number")
        return None


def _json_field(raw: dict[str, str], name: str, problems: list[str]) -> None:
    if name in raw:
        try:
            json.loads(raw[name])
        except ValueError:
            problems.append(f"{name} is not JSON")


def _iso(ms: int | None, problems: list[str]) -> str | None:
    if not ms:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        problems.append("finishedOn is out of range")
        return None


def parse_failed_job(job_id: str, raw: dict[str, str]) -> FailedJob:
    """The row of one job from its hash (`{}`: the hash is gone)."""
    if not raw:
        return FailedJob(job_id, problems=["the job's hash is missing"])
    problems: list[str] = []
    attempts = _int_field(raw, ("attemptsMade", "atm"), problems)
    if attempts is None and not problems:
        attempts = 0  # not stored until the first attempt ends
    finished = _int_field(raw, ("finishedOn",), problems)
    _int_field(raw, ("timestamp",), problems)
    for name in ("data", "opts"):
        _json_field(raw, name, problems)
    if "name" not in raw:
        problems.append("no name")
    return FailedJob(job_id, raw.get("name"), attempts, _iso(finished, problems),
                     redact(raw.get("failedReason") or ""), problems)


class FailedJobs:
    """The failed jobs of one queue, through `client` (the CLI's)."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str) -> None:
        self.client = client
        self.base = f"{prefix}:{queue}:"

    async def ids(self, limit: int | None = None) -> list[str]:
        """Ids of failed jobs, the most recent first (all of them when `limit` is None)."""
        end = -1 if limit is None else limit - 1
        return [str(job_id) for job_id in await self.client.zrevrange(self.base + "failed", 0, end)]

    async def rows(self, limit: int) -> list[FailedJob]:
        """The `limit` most recent failed jobs, each parsed on its own."""
        ids = await self.ids(limit)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.base + job_id)
        hashes = await pipe.execute()
        return [parse_failed_job(job_id, raw) for job_id, raw in zip(ids, hashes, strict=True)]

    async def named(self, name: str) -> list[FailedJob]:
        """Every failed job called `name`, parsed."""
        ids = await self.ids()
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.base + job_id, "name")
        names = await pipe.execute()
        matching = [job_id for job_id, job_name in zip(ids, names, strict=True)
                    if job_name == name]
        pipe = self.client.pipeline(transaction=False)
        for job_id in matching:
            pipe.hgetall(self.base + job_id)
        hashes = await pipe.execute()
        return [parse_failed_job(job_id, raw)
                for job_id, raw in zip(matching, hashes, strict=True)]
