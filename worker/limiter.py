"""Pacing of outbound Slack calls per channel and per team, shared by every worker process.

Slack allows about one `chat.postMessage` per second per channel and a workspace-wide cap. One
Lua script decides atomically, on Redis time, whether a call may go now:

* Channel: each call reserves the channel's next free slot (GCRA without burst). A job whose slot
  is in the future is delayed until exactly that slot and keeps its reservation, so a flooded
  channel drains in order, one call per interval, with no herd of jobs re-checking every second.
  A job that comes back late (busy workers, team limit) is still spaced from the channel's last
  actual call.
* Team: a GCRA check allowing a burst of one second's worth of calls, without reservation; a job
  over it is delayed by the wait (stretched a little) and tries again.

Jobs over a limit are never slept on: `acquire` raises `PacingLimited` and the Dispatcher moves
the job back to `delayed`. Keys live under `<prefix>:slackq:<queue>:rate:` (outside BullMQ's own
`<prefix>:<queue>:` names) and expire on their own; with a `{hash-tagged}` prefix they share a
cluster slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from slackq.settings import Settings
from worker.errors import PacingLimited, RedisTransientError

# How long a job keeps a channel slot it has not used yet (it may wait behind the team limit or a
# busy worker pool before it comes back).
RESERVATION_TTL_MS = 600_000

ACQUIRE_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local channel_iv = tonumber(ARGV[1])
local team_iv = tonumber(ARGV[2])
local team_burst = tonumber(ARGV[3])
local resv_ttl = tonumber(ARGV[4])

local slot = tonumber(redis.call('GET', KEYS[3]) or '-1')
local reserved = slot >= 0
-- A slot taken now is written down only if the job is sent away (it keeps it for its return);
-- a call that goes at once neither writes nor deletes a reservation.
local function refuse(wait, scope)
  if not reserved and slot >= 0 then
    redis.call('SET', KEYS[3], slot, 'PX', math.max(slot - now, 0) + resv_ttl)
  end
  return {wait, scope}
end
if slot < 0 and channel_iv > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  slot = tat
  redis.call('SET', KEYS[1], slot + channel_iv, 'PX', slot + channel_iv - now + 1000)
end
if slot > now then
  return refuse(slot - now, 'channel')
end
-- A job may come back after its slot (worker busy, team limit): space actual calls all the same.
if channel_iv > 0 then
  local last = tonumber(redis.call('GET', KEYS[4]) or '0')
  if now < last + channel_iv then
    return refuse(last + channel_iv - now, 'channel')
  end
end
-- Slack answered 429 for this channel: nobody calls before its Retry-After is over.
local held = tonumber(redis.call('GET', KEYS[5]) or '0')
if now < held then
  return refuse(held - now, 'channel')
end

if team_iv > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now then tat = now end
  local over = tat - now - (team_burst - 1) * team_iv
  if over > 0 then
    return refuse(over, 'team')
  end
  redis.call('SET', KEYS[2], tat + team_iv, 'PX', tat + team_iv - now + 1000)
end
if channel_iv > 0 then
  redis.call('SET', KEYS[4], now, 'PX', channel_iv + 1000)
end
if reserved then redis.call('DEL', KEYS[3]) end
return {0, ''}
"""


HOLD_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local free_at = now + tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if free_at > tat then
  redis.call('SET', KEYS[1], free_at, 'PX', free_at - now + 1000)
end
return free_at - now
"""


@dataclass(frozen=True)
class Limits:
    """Calls per second per channel and per team; 0 turns that limit off."""

    per_channel: float
    per_team: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """`WORKER_RATE_PER_CHANNEL` and `WORKER_RATE_PER_TEAM`."""
        return cls(settings.worker_rate_per_channel, settings.worker_rate_per_team)

    @staticmethod
    def interval_ms(rate: float) -> int:
        return math.ceil(1000 / rate) if rate > 0 else 0

    @property
    def team_burst(self) -> int:
        return max(1, int(self.per_team))


class Limiter:
    """`await limiter.acquire(team, channel, job_id)` returns when a call may go, else raises."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self.base = f"{prefix}:slackq:{queue}:rate"
        self._script = client.register_script(ACQUIRE_LUA)
        self._hold = client.register_script(HOLD_LUA)

    def keys(self, team_id: str, channel: str, job_id: str) -> list[str]:
        return [
            f"{self.base}:channel:{team_id}:{channel}",
            f"{self.base}:team:{team_id}",
            f"{self.base}:resv:{job_id}:{channel}",
            f"{self.base}:last:{team_id}:{channel}",
            f"{self.base}:hold:{team_id}:{channel}",
        ]

    def args(self) -> list[int]:
        """ARGV[1..4] of `ACQUIRE_LUA` (also of the effect log's paced claim)."""
        return [
            Limits.interval_ms(self.limits.per_channel),
            Limits.interval_ms(self.limits.per_team),
            self.limits.team_burst,
            RESERVATION_TTL_MS,
        ]

    async def acquire(self, team_id: str, channel: str, job_id: str) -> None:
        """Take a slot now or raise `PacingLimited` with the wait in seconds."""
        try:
            wait_ms, scope = await self._script(keys=self.keys(team_id, channel, job_id),
                                                args=self.args())
        except RedisError as exc:
            raise RedisTransientError(f"rate limiter: {type(exc).__name__}") from exc
        raise_if_paced(wait_ms, scope)

    async def hold(self, team_id: str, channel: str, seconds: float) -> None:
        """Slack said 429 for this channel: give out no slot in it for `seconds`.

        Without this every job already queued for the channel would call Slack and collect its
        own 429 during the window.
        """
        key = self.keys(team_id, channel, "-")[4]
        try:
            await self._hold(keys=[key], args=[math.ceil(seconds * 1000)])
        except RedisError as exc:
            raise RedisTransientError(f"rate limiter: {type(exc).__name__}") from exc


def raise_if_paced(wait_ms: int | str, scope: str | bytes) -> None:
    """`ACQUIRE_LUA`'s answer: nothing when the call may go, else `PacingLimited`."""
    if int(wait_ms) > 0:
        scope = scope.decode() if isinstance(scope, bytes) else str(scope)
        raise PacingLimited(int(wait_ms) / 1000, scope)
