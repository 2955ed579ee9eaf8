"""Slack side effects recorded per job, so a job re-run after a crash does not post twice.

For each named effect of a job (default: the Slack method) the hash
`<prefix>:slackq:<queue>:effects:<job id>` holds

* `started:<name>`: how many attempts began the call;
* `done:<name>`: the call's result (e.g. `{"channel": ..., "ts": ...}`) once Slack accepted it.

A re-run finds `done:<name>` and skips the call. The window that remains: a worker that dies after
Slack accepted the call but before `done:<name>` is written (one Redis round trip) makes the next
attempt call again. Such an attempt sees `started` without `done`, logs
`slack_effect_possible_duplicate` and counts it in
`<prefix>:slackq:<queue>:effects:possible-duplicates`.
Records expire after 24 h, like failed jobs.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from worker.errors import RedisTransientError

# Set with PEXPIRE (granted by the least-privilege ACL in docs/security.md, like EXPIRE).
EFFECT_TTL_MS = 86_400_000
# Only what a re-run may need from a Slack answer; never message bodies.
KEPT_FIELDS = ("channel", "ts", "thread_ts", "id", "scheduled_message_id")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The fields of a Slack answer worth recording."""
    return {key: result[key] for key in KEPT_FIELDS if key in result}


class EffectLog:
    """Reads and writes the per-job effect records."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str) -> None:
        self.client = client
        self.base = f"{prefix}:slackq:{queue}:effects"

    def key(self, job_id: str) -> str:
        return f"{self.base}:{job_id}"

    @property
    def duplicates_key(self) -> str:
        return f"{self.base}:possible-duplicates"

    async def recorded(self, job_id: str, name: str) -> dict[str, Any] | None:
        """The recorded result of effect `name`, or None if it has not completed."""
        raw = await self._run(self.client.hget(self.key(job_id), f"done:{name}"))
        return json.loads(raw) if raw else None

    async def begin(self, job_id: str, name: str) -> bool:
        """Mark an attempt at `name`; True if an earlier attempt began it and never recorded it."""
        key = self.key(job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"started:{name}", 1)
            pipe.pexpire(key, EFFECT_TTL_MS)
            started, _ = await self._run(pipe.execute())
        if int(started) > 1:
            await self._run(self.client.incr(self.duplicates_key))
            return True
        return False

    async def abandon(self, job_id: str, name: str) -> None:
        """Undo `begin`: Slack answered that the call did not take effect."""
        await self._run(self.client.hincrby(self.key(job_id), f"started:{name}", -1))

    async def record(self, job_id: str, name: str, result: dict[str, Any]) -> None:
        """Store what Slack answered for `name`."""
        key = self.key(job_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, f"done:{name}", json.dumps(summary(result), separators=(",", ":")))
            pipe.pexpire(key, EFFECT_TTL_MS)
            await self._run(pipe.execute())

    async def possible_duplicates(self) -> int:
        return int(await self._run(self.client.get(self.duplicates_key)) or 0)

    @staticmethod
    async def _run(awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise RedisTransientError(f"effect log: {type(exc).__name__}") from exc
