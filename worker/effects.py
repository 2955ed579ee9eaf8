"""Slack side effects of a job: a lease per run, and a record per call Slack accepted.

The records live in the job's own BullMQ hash `<prefix>:<queue>:<job id>`, so they last exactly
as long as the job can run again and go with it (BullMQ's `removeOnComplete` / `removeOnFail`,
`slackq clean`); once the job is gone its id cannot come back while its deduplication key lives
(`JOB_DEDUPLICATION_TTL_MS`), and Slack redelivers for ~6 minutes only. Fields:

* `slackq:done:<name>`: what Slack answered for effect `name` (e.g. `{"channel", "ts"}`);
* `slackq:start:<name>`: the lock token of the last run that began the call without recording
  it; `slackq:wait:<name>`: the start a later run already waited out once.

`<prefix>:slackq:<queue>:effects:<job id>:lease` is the lock token of the one run that may call
Slack for this job now. It is set with the job's lock token and a TTL of the lock duration, and
extended whenever BullMQ renews that lock, so it lives as long as the run could still hold the
job.

`claim` decides, in one script call, what a run may do for effect `name`:

* `done`: recorded already; the call is skipped and the record returned.
* leased: another run holds a live lease (a second run after a lock loss, while the first is
  still calling Slack): this run is deferred (`EffectLeased`) without calling Slack.
* unsettled: an earlier run began the call and never recorded it, and its lease is gone. That run
  may still be alive with Slack's answer in memory, waiting for Redis to take the record
  (worker.md, "Effects"): this run is deferred once by `wait_ms` (`EffectUnsettled`). If the
  record is still missing after that, the earlier run is taken to be dead: the call goes ahead,
  logged as `slack_effect_possible_duplicate` and counted in `...:effects:possible-duplicates`.
* otherwise the run takes the lease and calls.

The scripts never create the job hash: a job removed while it runs records nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from worker.errors import Deferred, RedisTransientError
from worker.limiter import ACQUIRE_LUA, raise_if_paced
from worker.outage import RedisOutage, is_transient

log = structlog.get_logger(__name__)

# A handler still busy this long after Slack's answer gets its record written on its own round
# trip; one that finishes sooner sends it with its completion (one round trip for both).
RECORD_DELAY_SECONDS = 0.05
# Only what a re-run may need from a Slack answer; never message bodies.
KEPT_FIELDS = ("channel", "ts", "thread_ts", "id", "scheduled_message_id")

def _claim_lua(keys: int, args: int, paced: bool) -> str:
    """The claim's Lua, its KEYS (job hash, lease, duplicates counter) from KEYS[keys + 1] and
    its ARGV (name, token, lease ms, wait ms) from ARGV[args + 1]; `paced`: it calls `pace()`
    (the limiter's script) once the effect may go, and answers `{'paced', ms, scope}` if not.

    Replies: {'done', json} | {'leased', ms} | {'unsettled', ms} | {'go', duplicate 0/1} |
    {'gone', 0}.
    """
    pace = """
local wait = pace()
if tonumber(wait[1]) > 0 then return {'paced', wait[1], wait[2]} end
""" if paced else ""
    return f"""
local job, lease, dups = KEYS[{keys + 1}], KEYS[{keys + 2}], KEYS[{keys + 3}]
local name, token = ARGV[{args + 1}], ARGV[{args + 2}]
if redis.call('EXISTS', job) == 0 then return {{'gone', 0}} end
local done = redis.call('HGET', job, 'slackq:done:' .. name)
if done then return {{'done', done}} end
local holder = redis.call('GET', lease)
if holder and holder ~= token then
  return {{'leased', redis.call('PTTL', lease)}}
end
local started = redis.call('HGET', job, 'slackq:start:' .. name)
local duplicate = 0
if started and started ~= token then
  if redis.call('HGET', job, 'slackq:wait:' .. name) ~= started then
    redis.call('HSET', job, 'slackq:wait:' .. name, started)
    return {{'unsettled', tonumber(ARGV[{args + 4}])}}
  end
  duplicate = 1
end
{pace}
if duplicate == 1 then redis.call('INCR', dups) end
redis.call('SET', lease, token, 'PX', ARGV[{args + 3}])
redis.call('HSET', job, 'slackq:start:' .. name, token)
return {{'go', duplicate}}
"""


CLAIM_LUA = _claim_lua(0, 0, paced=False)
# The limiter's check and the claim in one script call: the limiter's KEYS[1..5] and
# ARGV[1..4] first (worker/limiter.py), the claim's after them. A recorded effect, or one
# another run holds, is answered before any pacing slot is taken.
_REPLICATE = "if redis.replicate_commands then pcall(redis.replicate_commands) end\n"
PACED_CLAIM_LUA = (_REPLICATE + "local function pace()\n" + ACQUIRE_LUA.replace(_REPLICATE, "")
                   + "\nend\n" + _claim_lua(5, 4, paced=True))

# KEYS: job hash, lease. ARGV: token, release ('1' or ''), then name/json pairs.
# Records what Slack accepted and (with release) ends this run's lease: idempotent.
SETTLE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 3, #ARGV, 2 do
    redis.call('HSET', KEYS[1], 'slackq:done:' .. ARGV[i], ARGV[i + 1])
    redis.call('HDEL', KEYS[1], 'slackq:start:' .. ARGV[i], 'slackq:wait:' .. ARGV[i])
  end
end
if ARGV[2] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: job hash. ARGV: name, token, refused ('1' or ''). The call failed: if Slack refused it,
# it never happened (forget the start); otherwise nobody knows, but no answer will ever be
# recorded, so a later run need not wait for one (mark the start as waited out).
ABANDON_LUA = """
if redis.call('HGET', KEYS[1], 'slackq:start:' .. ARGV[1]) == ARGV[2] then
  if ARGV[3] == '1' then
    redis.call('HDEL', KEYS[1], 'slackq:start:' .. ARGV[1])
  else
    redis.call('HSET', KEYS[1], 'slackq:wait:' .. ARGV[1], ARGV[2])
  end
end
return 1
"""

# KEYS: leases. ARGV: lease ms, then one token per lease. Extends the leases still held.
EXTEND_LUA = """
local extended = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    extended = extended + 1
  end
end
return extended
"""


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a Slack answer worth recording."""
    return {key: result[key] for key in KEPT_FIELDS if key in result}


def encode(result: Mapping[str, Any]) -> str:
    return json.dumps(summary(result), separators=(",", ":"))


class EffectLeased(Deferred):
    """Another live run of this job holds the effect lease: come back once it has ended."""

    def __init__(self, delay_seconds: float) -> None:
        super().__init__(delay_seconds, "effect leased by another run")


class EffectUnsettled(Deferred):
    """An earlier run began this call and never recorded it: give it time to record."""

    def __init__(self, delay_seconds: float) -> None:
        super().__init__(delay_seconds, "effect of an earlier run not recorded yet")


# How long a run whose claim found no job hash waits before it runs again (`JobGone`): more
# than one primary check (REDIS_SENTINEL_CHECK_SECONDS, default 1 s), so that by then this
# process's clients agree on the primary.
GONE_RETRY_SECONDS = 2.0


class JobGone(Deferred):
    """The claim found no job hash on the server it ran on.

    Not proof that the job was removed: the worker's BullMQ connection and the command client
    that runs the claim are two pools, each moved to a new primary by its own primary check
    (slackq/sentinel_pool.py), up to a check interval apart. In that window a job fetched from
    the new primary is claimed on the isolated old one, which never had it: failing it for
    good (as this did) lost acknowledged events (docs/high-availability.md, the partition
    campaign). So the run is deferred without calling Slack: on the server that holds the job
    it runs again in `GONE_RETRY_SECONDS`; a job really removed has no hash there either, and
    its move to delayed fails as its move to failed did before.
    """

    code = "job_removed"

    def __init__(self, job_id: str) -> None:
        super().__init__(GONE_RETRY_SECONDS, f"job {job_id} not on the server of the claim")


@dataclass(frozen=True)
class Claim:
    """What `EffectLog.claim` allows: `recorded` (skip the call) or a call, maybe a duplicate."""

    recorded: dict[str, Any] | None = None
    duplicate: bool = False


class EffectLog:
    """Leases, records and the duplicate count, shared by every worker process."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str, *,
                 lease_ms: int, outage: RedisOutage | None = None) -> None:
        self.client = client
        self.outage = outage or RedisOutage()
        self.jobs = f"{prefix}:{queue}"  # BullMQ's job hashes: `<prefix>:<queue>:<job id>`
        self.base = f"{prefix}:slackq:{queue}:effects"
        self.lease_ms = lease_ms
        self.held: dict[str, str] = {}  # job id -> token of the leases this process holds
        self._claim = client.register_script(CLAIM_LUA)
        self._paced_claim = client.register_script(PACED_CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)
        self._abandon = client.register_script(ABANDON_LUA)
        self._extend = client.register_script(EXTEND_LUA)

    def key(self, job_id: str) -> str:
        """The job's hash, where its effects are recorded."""
        return f"{self.jobs}:{job_id}"

    def lease_key(self, job_id: str) -> str:
        return f"{self.base}:{job_id}:lease"

    @property
    def duplicates_key(self) -> str:
        return f"{self.base}:possible-duplicates"

    async def claim(self, job_id: str, name: str, token: str,
                    pacing: tuple[list[str], list[int]] | None = None) -> Claim:
        """May this run (`token`) call effect `name` now? Raises `Deferred` when it may not.

        `pacing`: the limiter's KEYS and ARGV (`Limiter.keys`, `Limiter.args`) for a paced
        call: its check runs in the same script (`PacingLimited` when over the pace).
        """
        keys = [self.key(job_id), self.lease_key(job_id), self.duplicates_key]
        args: list[str | int] = [name, token, self.lease_ms, self.lease_ms]
        if pacing is None:
            reply = await self._run(self._claim(keys=keys, args=args))
        else:
            reply = await self._run(self._paced_claim(keys=[*pacing[0], *keys],
                                                      args=[*pacing[1], *args]))
        kind, value = reply[0], reply[1]
        if kind == "paced":
            raise_if_paced(value, reply[2])
        if kind == "gone":
            raise JobGone(job_id)
        if kind == "done":
            return Claim(recorded=json.loads(value))
        if kind == "leased":
            raise EffectLeased(max(int(value), 1) / 1000)
        if kind == "unsettled":
            raise EffectUnsettled(int(value) / 1000)
        self.held[job_id] = token
        return Claim(duplicate=bool(int(value)))

    def settle_args(self, job_id: str, token: str, records: Mapping[str, str],
                    release: bool) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of the settle script: write `records` (name -> encoded answer), and
        with `release` end this run's lease."""
        args: list[Any] = [token, "1" if release else ""]
        for name, encoded in records.items():
            args += [name, encoded]
        return [self.key(job_id), self.lease_key(job_id)], args

    async def settle(self, job_id: str, token: str, records: Mapping[str, str], *,
                     release: bool) -> None:
        """Record what Slack accepted; with `release`, this run is over: end its lease."""
        keys, args = self.settle_args(job_id, token, records, release)
        await self._run(self._settle(keys=keys, args=args))
        if release:
            self.forget(job_id, token)

    def accepted(self, run: EffectRun, name: str, result: Mapping[str, Any]) -> None:
        """Slack accepted `name`: keep its answer until Redis has it (`RECORD_DELAY_SECONDS`)."""
        run.unrecorded[name] = encode(result)
        if run.timer is None and (run.recording is None or run.recording.done()):
            # A timer, not a task sleeping: nearly every run completes first and cancels it,
            # and a timer costs a fraction of a task's creation and cancellation.
            run.timer = asyncio.get_running_loop().call_later(
                RECORD_DELAY_SECONDS, self._record_now, run)

    def _record_now(self, run: EffectRun) -> None:
        run.timer = None
        run.recording = asyncio.ensure_future(self._record(run))

    async def _record(self, run: EffectRun) -> None:
        records = dict(run.unrecorded)
        try:
            await self.settle(run.job_id, run.token, records, release=False)
        except RedisTransientError as exc:
            self.outage.failed(exc, "effect_record")  # kept: the completion carries it
            return
        for name, encoded in records.items():
            if run.unrecorded.get(name) == encoded:
                del run.unrecorded[name]

    def settle_command(self, run: EffectRun) -> tuple[Any, ...] | None:
        """The command that records `run`'s answers and ends its lease, to send with its
        completion; None when there is nothing to settle."""
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        if run.recording is not None:
            run.recording.cancel()
        if not run.unrecorded and not run.leased:
            return None
        keys, args = self.settle_args(run.job_id, run.token, run.unrecorded, release=True)
        # By SHA, not the script's text (~600 bytes a job): `load_scripts` loaded it at start,
        # and a Redis that lost it since answers NOSCRIPT for this command alone, which the
        # completion sends again on its own (`Completion.unapplied`).
        return ("EVALSHA", self._settle.sha, len(keys), *keys, *args)

    async def load_scripts(self) -> None:
        """Load the settle script, which completions send by SHA (`settle_command`)."""
        await self._run(self.client.script_load(SETTLE_LUA))

    def log_unapplied(self, run: EffectRun, error: Exception) -> None:
        """The completion went through without its settle (`error`): it is sent again alone."""
        log.warning("effect_record_resent", job_id=run.job_id, error=type(error).__name__)

    def settled(self, run: EffectRun) -> None:
        """Redis took `settle_command(run)`."""
        run.unrecorded.clear()
        run.leased = False
        self.forget(run.job_id, run.token)

    async def settle_durably(self, run: EffectRun) -> None:
        """Record `run`'s answers and end its lease, retrying with the process's backoff until
        Redis takes it (or the task is cancelled by a forced shutdown)."""
        if self.settle_command(run) is None:
            return
        while True:
            try:
                await self.settle(run.job_id, run.token, run.unrecorded, release=True)
            except RedisTransientError as exc:
                if not is_transient(exc):
                    raise
                await self.outage.backoff(exc, "effect_record")
                continue
            self.outage.succeeded()
            self.settled(run)
            return

    def forget(self, job_id: str, token: str) -> None:
        """Stop extending this run's lease (it ended, or the run is over)."""
        if self.held.get(job_id) == token:
            del self.held[job_id]

    async def abandon(self, job_id: str, name: str, token: str, *, refused: bool) -> None:
        """The call failed without an answer to record. `refused`: Slack said it did not take
        effect (a later run calls again, no duplicate); otherwise a later run calls again at
        once, counted as a possible duplicate."""
        await self._run(self._abandon(keys=[self.key(job_id)],
                                      args=[name, token, "1" if refused else ""]))

    async def extend(self, job_ids: Iterable[str]) -> int:
        """Extend the leases this process holds for `job_ids` (their locks were just renewed)."""
        held = [(job_id, self.held[job_id]) for job_id in job_ids if job_id in self.held]
        if not held:
            return 0
        keys = [self.lease_key(job_id) for job_id, _ in held]
        args: list[str | int] = [self.lease_ms, *(token for _, token in held)]
        return int(await self._run(self._extend(keys=keys, args=args)))

    async def recorded(self, job_id: str, name: str) -> dict[str, Any] | None:
        """The recorded answer of effect `name`, or None."""
        raw = await self._run(self.client.hget(self.key(job_id), f"slackq:done:{name}"))
        return json.loads(raw) if raw else None

    async def possible_duplicates(self) -> int:
        return int(await self._run(self.client.get(self.duplicates_key)) or 0)

    @staticmethod
    async def _run(awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise RedisTransientError(f"effect log: {type(exc).__name__}") from exc


@dataclass
class EffectRun:
    """One run of a job (one lock token) as the effect log sees it.

    `unrecorded` holds what Slack accepted and Redis has not confirmed yet: the run keeps it in
    memory and writes it with its next round trip (the completion, a failure's settle), or
    after `RECORD_DELAY_SECONDS` if the handler is still busy by then.
    """

    job_id: str
    token: str
    leased: bool = False
    unrecorded: dict[str, str] = field(default_factory=dict)
    recording: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None  # starts `recording` after RECORD_DELAY_SECONDS
