"""What an admin can do to the queue, and the audit log that records each action.

Single jobs go through the port's `Job.retry`, `Job.promote` and `Queue.remove`. A bulk action
applies to a filtered set (the index's newest `MAX_CANDIDATES` matches in one state) job by job,
or, with no filter, to the whole state through the port's `retryJobs` / `clean`. Its dry run
counts the same set without touching it.

The audit log is a capped list `<prefix>:slackq:<queue>:audit` of JSON entries
`{"at", "who", "action", "target", "count"}`, newest first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from dashboard.queries import MAX_CANDIDATES, Reader
from slackq.job_index import Filters

AUDIT_MAX = 1000
BULK_ACTIONS = {"retry": ("failed", "completed"), "clean": ("failed", "completed", "wait",
                                                              "delayed", "prioritized", "paused")}
UNFILTERED_BATCH = 1000


class ActionRefused(Exception):
    """An action that does not apply (unknown job, wrong state, unknown bulk action)."""


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str
    target: str
    count: int


class Actions:
    """Admin actions on one queue, each written to the audit log."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.audit_key = f"{reader.prefix}:slackq:{reader.name}:audit"

    async def job_action(self, who: str, action: str, job_id: str) -> int:
        """`retry`, `promote` or `remove` one job; returns how many jobs changed (0 or 1)."""
        job, state = await self.reader.job(job_id)
        if job is None:
            raise ActionRefused(f"no job {job_id}")
        if action == "retry" and state in ("failed", "completed"):
            await job.retry(state)
        elif action == "promote" and state == "delayed":
            await job.promote()
        elif action == "remove" and state != "active":
            if not await self.reader.queue.remove(job_id):
                raise ActionRefused(f"job {job_id} could not be removed")
        else:
            raise ActionRefused(f"cannot {action} a job that is {state}")
        await self.audit(who, action, f"job {job_id}", 1)
        return 1

    async def bulk_count(self, action: str, state: str, filters: Filters) -> int:
        """How many jobs `bulk` would touch now (the dry run)."""
        _check_bulk(action, state)
        if filters:
            return len(await self.reader.matching(state, filters))
        return (await self.reader.counts())[state]

    async def bulk(self, who: str, action: str, state: str, filters: Filters) -> int:
        """Retry or clean the jobs of `state` matching `filters`; returns how many."""
        _check_bulk(action, state)
        if filters:
            count = await self._bulk_filtered(action, state, filters)
        else:
            count = await self._bulk_state(action, state)
        await self.audit(who, f"{action} all", describe(state, filters), count)
        return count

    async def _bulk_filtered(self, action: str, state: str, filters: Filters) -> int:
        count = 0
        for job_id, _ in await self.reader.matching(state, filters):
            job = await self.reader.queue.getJob(job_id)
            if job is None:
                continue
            if action == "retry":
                await job.retry(state)
                count += 1
            else:
                count += int(await self.reader.queue.remove(job_id) or 0)
        return count

    async def _bulk_state(self, action: str, state: str) -> int:
        count = (await self.reader.counts())[state]
        if action == "retry":
            await self.reader.queue.retryJobs({"state": state, "count": UNFILTERED_BATCH,
                                               "timestamp": int(time.time() * 1000)})
            return count
        removed = 0
        while batch := await self.reader.queue.clean(0, UNFILTERED_BATCH, state):
            removed += len(batch)
        return removed

    async def pause(self, who: str, paused: bool) -> None:
        if paused:
            await self.reader.queue.pause()
        else:
            await self.reader.queue.resume()
        await self.audit(who, "pause" if paused else "resume", "queue", 0)

    async def audit(self, who: str, action: str, target: str, count: int) -> None:
        entry = json.dumps({"at": time.time(), "who": who, "action": action, "target": target,
                            "count": count}, separators=(",", ":"))
        async with self.reader.client.pipeline(transaction=True) as pipe:
            pipe.lpush(self.audit_key, entry)
            pipe.ltrim(self.audit_key, 0, AUDIT_MAX - 1)
            await pipe.execute()

    async def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        raw = await self.reader.client.lrange(self.audit_key, 0, limit - 1)
        entries = []
        for line in raw:
            item: dict[str, Any] = json.loads(line)
            entries.append(AuditEntry(float(item["at"]), str(item["who"]), str(item["action"]),
                                      str(item["target"]), int(item["count"])))
        return entries


def _check_bulk(action: str, state: str) -> None:
    if state not in BULK_ACTIONS.get(action, ()):
        raise ActionRefused(f"cannot {action} all {state} jobs")


def describe(state: str, filters: Filters) -> str:
    """The target of a bulk action in words, e.g. `failed jobs with channel=C1, text=deploy`."""
    chosen = ", ".join(f"{key}={value}" for key, value in filters.as_dict().items() if value)
    return f"{state} jobs" + (f" with {chosen}" if chosen else "") + (
        f" (newest {MAX_CANDIDATES} matches)" if chosen else "")
