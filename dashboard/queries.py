"""What the pages show, read from Redis: the port's public getters plus documented key layouts.

Every query is bounded (a page is at most `MAX_PAGE` jobs; a search looks at the newest
`MAX_CANDIDATES` matches of the index) so that no page can hold the web process's event loop for
long. Key layouts read directly, each documented where it is written:

* BullMQ's own: `<prefix>:<queue>:<state>` (sorted sets for completed, failed, delayed and
  prioritized; a list for active), `<prefix>:<queue>:<job id>` (the job hash, read as
  `Queue.getJob` reads it, then `Job.fromJSON`);
* the `slackq:done:<name>` / `slackq:start:<name>` fields of the job hash (worker/effects.py);
* `<prefix>:slackq:<queue>:rate:hold:<team>:<channel>` (worker/limiter.py: Redis-time ms until
  which Slack's 429 holds the channel).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Queue

from slackq.connection import same_node_as
from slackq.job_index import Filters, JobFields, JobIndex
from slackq.logging import redact, redact_value
from slackq.wait_history import WaitKeys

STATES = ("wait", "active", "delayed", "prioritized", "paused", "completed", "failed")
QUEUED_STATES = frozenset({"wait", "delayed", "prioritized", "paused"})
MAX_PAGE = 100
MAX_CANDIDATES = 500
MAX_LOGS = 50

# A job's state from BullMQ's structures, in Redis: in one of the sorted sets, else in the active
# list, else waiting (paused while the queue is); "missing" when its hash is gone. Job keys are
# built in the script, as BullMQ's own scripts do; every command is in docs/security.md's ACL.
CLASSIFY_LUA = """
local base = ARGV[1]
local paused = redis.call('HEXISTS', base .. ':meta', 'paused') == 1
local sorted = {'failed', 'completed', 'delayed', 'prioritized'}
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local state = 'missing'
  if redis.call('EXISTS', base .. ':' .. id) == 1 then
    state = false
    for _, name in ipairs(sorted) do
      if redis.call('ZSCORE', base .. ':' .. name, id) then state = name break end
    end
    if not state then
      if redis.call('LPOS', base .. ':active', id) then state = 'active'
      elseif paused then state = 'paused' else state = 'wait' end
    end
  end
  out[#out + 1] = state
end
return out
"""


@dataclass(frozen=True)
class JobRow:
    """One line of a job list."""

    id: str
    name: str
    state: str
    timestamp: int
    attempts: int
    fields: JobFields
    failed_reason: str

    @classmethod
    def of(cls, job: Job, state: str) -> JobRow:
        data = job.data if isinstance(job.data, dict) else {}
        return cls(id=str(job.id), name=str(job.name), state=state,
                   timestamp=int(job.timestamp or 0), attempts=int(job.attemptsMade or 0),
                   fields=JobFields.of(str(job.name), redact_value(data)),
                   failed_reason=redact(str(job.failedReason or "")))


@dataclass(frozen=True)
class Page:
    rows: list[JobRow]
    total: int
    page: int
    per_page: int
    capped: bool = False  # the search looked at MAX_CANDIDATES matches only

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@dataclass
class Reader:
    """The dashboard's view of one queue."""

    client: aioredis.Redis
    queue: Queue
    index: JobIndex
    prefix: str
    name: str
    key_base: str = field(init=False)
    wait_keys: WaitKeys = field(init=False)

    def __post_init__(self) -> None:
        self.key_base = f"{self.prefix}:{self.name}"
        self.wait_keys = WaitKeys(self.prefix, self.name)
        self._classify = self.client.register_script(CLASSIFY_LUA)

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts(*STATES)
        return {state: int(counts.get(state, 0)) for state in STATES}

    async def oldest_waiting_ms(self) -> int | None:
        """When the job that has waited longest was stored (ms), or None if nothing waits."""
        jobs = await self.queue.getJobs(["wait"], 0, 0, True)
        return int(jobs[0].timestamp) if jobs and jobs[0] else None

    async def list_jobs(self, state: str, page: int, per_page: int, total: int) -> Page:
        """One page of a state (`total` jobs), newest first, through the port's getters."""
        start = (page - 1) * per_page
        jobs = await self.queue.getJobs([state], start, start + per_page - 1, False)
        return Page([JobRow.of(job, state) for job in jobs if job], total, page, per_page)

    async def search_jobs(self, state: str, filters: Filters, page: int, per_page: int) -> Page:
        """The jobs in `state` ("all": any) matching `filters` through the index."""
        ids = await self.matching(state, filters)
        start = (page - 1) * per_page
        rows = await self.rows([(job_id, st) for job_id, st in ids[start:start + per_page]])
        return Page(rows, len(ids), page, per_page, capped=len(ids) >= MAX_CANDIDATES)

    async def matching(self, state: str, filters: Filters,
                       limit: int = MAX_CANDIDATES) -> list[tuple[str, str]]:
        """(id, state) of the newest `limit` indexed jobs matching `filters`, those in `state`
        ("all": any)."""
        ids = await self.index.search(filters, limit)
        states = await self.classify(ids)
        return [(job_id, states[job_id]) for job_id in ids
                if states[job_id] != "missing" and state in ("all", states[job_id])]

    async def rows(self, ids: Sequence[tuple[str, str]]) -> list[JobRow]:
        """The jobs of `ids` from one pipeline of HGETALLs (what `Queue.getJob` reads)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id, _ in ids:
                pipe.hgetall(f"{self.key_base}:{job_id}")
            hashes = await pipe.execute()
        return [JobRow.of(Job.fromJSON(self.queue, raw, job_id), st)
                for raw, (job_id, st) in zip(hashes, ids, strict=True) if raw]

    async def classify(self, ids: Sequence[str]) -> dict[str, str]:
        """Each job's state, decided in Redis by one script call (`CLASSIFY_LUA`)."""
        if not ids:
            return {}
        states = await self._classify(keys=[], args=[self.key_base, *ids])
        return {job_id: str(state) for job_id, state in zip(ids, states, strict=True)}

    async def job(self, job_id: str) -> tuple[Job | None, str]:
        job = await self.queue.getJob(job_id)
        if job is None:
            return None, "unknown"
        return job, str(await self.queue.getJobState(job_id))

    async def logs(self, job_id: str) -> tuple[list[str], int]:
        """The newest `MAX_LOGS` lines of the job's log (`Job.log`: Node handlers write it,
        slackq's do not), oldest first, and how many it has."""
        reply = await self.queue.getJobLogs(job_id, 0, MAX_LOGS - 1, False)
        return [str(line) for line in reversed(reply["logs"])], int(reply["count"])

    async def effects(self, job_id: str) -> list[dict[str, Any]]:
        """The worker's effect records of a job, one entry per effect name: the job hash's
        `slackq:done:<name>` (Slack's answer) and `slackq:start:<name>` (a run began the call
        and has not recorded it), as worker/effects.py writes them."""
        reply = await self.client.hgetall(f"{self.key_base}:{job_id}")
        raw = {str(key): str(value) for key, value in reply.items()
               if str(key).startswith("slackq:")}
        names = sorted({key.split(":", 2)[2] for key in raw if key.count(":") >= 2})
        return [{"name": name, "unsettled": f"slackq:start:{name}" in raw,
                 "done": _json_or_none(raw.get(f"slackq:done:{name}"))} for name in names]

    async def workers(self) -> list[dict[str, Any]]:
        """Connections of Python and Node workers on this queue, from CLIENT LIST (on a Redis
        Cluster, the list of the node serving the queue's slot, where workers block and run
        their scripts)."""
        clients = await self.client.client_list(
            **await same_node_as(self.client, f"{self.key_base}:marker"))
        return worker_connections(clients, self.prefix, self.name)

    async def holds(self, pairs: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """Channels Slack's 429 still holds, with the seconds left (Redis time)."""
        pairs = list(pairs)
        if not pairs:
            return []
        base = f"{self.prefix}:slackq:{self.name}:rate:hold"
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("TIME")  # pipe.time(): refused by a Redis Cluster pipeline
            for team, channel in pairs:
                pipe.get(f"{base}:{team}:{channel}")
            (seconds, micros), *values = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return [{"team": team, "channel": channel, "seconds_left": (int(v) - now_ms) / 1000}
                for (team, channel), v in zip(pairs, values, strict=True)
                if v is not None and int(v) > now_ms]


def _json_or_none(raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def worker_connections(clients: Iterable[dict[str, Any]], prefix: str,
                       queue: str) -> list[dict[str, Any]]:
    """Group CLIENT LIST entries of workers on `queue` by client name.

    The Python port names connections `<prefix>:<queue>` (plus `:w:<name>` when the worker has
    one); Node BullMQ writes the queue name in base64: `<prefix>:<base64(queue)>`.
    """
    names = {f"{prefix}:{queue}": "python",
             f"{prefix}:{base64.b64encode(queue.encode()).decode()}": "node"}
    groups: dict[str, dict[str, Any]] = {}
    for client in clients:
        name = str(client.get("name", ""))
        base, _, worker = name.partition(":w:")
        if base not in names:
            continue
        group = groups.setdefault(name, {"name": name, "worker": worker, "runtime": names[base],
                                         "connections": 0, "hosts": set(), "age": 0})
        group["connections"] += 1
        group["hosts"].add(str(client.get("addr", "")).rpartition(":")[0])
        group["age"] = max(group["age"], int(client.get("age", 0)))
    return [{**group, "hosts": sorted(group["hosts"])} for group in groups.values()]
