"""A small search index over stored jobs, written by the web process at enqueue time.

BullMQ cannot search jobs by what is in them. For each stored job the web process adds the job's
id, scored by the enqueue time in ms, to one sorted set per *term* of the job:

* `name:<job name>`, `team:<team id>`, `channel:<channel id>`, `user:<user id>`
* `word:<w>` for the first `MAX_WORDS` distinct words of 3 letters or more of the message text
  (lower-cased)

(An event id needs no entry: it is the job's id.)

Keys are `<prefix>:slackq:<queue>:index:<term>`. It also keeps the recently seen teams
(`index:teams`) and each team's channels (`index:channels:<team>`), which the dashboard's teams
page lists, and a per-minute count of stored jobs (`stats:stored:<hour>`, hash of minute -> n).

Bounded and expiring with the jobs: the index covers the newest `MAX_INDEXED` jobs at most, none
older than the retention (the longest of `JOB_KEEP_COMPLETED_SECONDS` and
`JOB_KEEP_FAILED_SECONDS`). `index:all` ranks the indexed jobs by time and `index:terms` holds
each one's terms; each write first *forgets* (removes from its terms' sets) up to 100 jobs past
either bound, so the index holds about `MAX_INDEXED` jobs' entries whatever the rate. Every key
also expires after the retention without writes, and a term's set keeps at most `MAX_PER_TERM`
ids. An id whose job is gone (removed by count) is skipped by readers.
One Lua script call writes many jobs' entries; the webhook queues the jobs (`record_soon`) and a
background flush builds and sends what queued up in the last `FLUSH_SECONDS` as one call, so
indexing costs a request neither a round trip nor any wait (an index 100 ms behind is fine for a
dashboard). Each flush wakes the web process twice (its timer, Redis' reply), which costs it
~300-450 us of CPU on a VM, more than the flush itself: every 20 ms, that was 60 us a request at
500 requests/s; every 100 ms, 10 flushes a second at any rate.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import structlog
from redis.exceptions import NoScriptError, RedisError

log = structlog.get_logger(__name__)

MAX_WORDS = 16  # each costs ~70 bytes of Redis memory per job
MAX_TERM_CHARS = 64
MAX_PER_TERM = 10_000
MAX_INDEXED = 20_000  # jobs: ~1.7 KB of Redis memory each (entries and term list), ~34 MB at most
MAX_TEAMS = 500
MAX_CHANNELS_PER_TEAM = 200
STATS_TTL_SECONDS = 8 * 86_400  # a week of per-minute history, and a day of slack
FLUSH_SECONDS = 0.1  # how long an entry may wait to share a round trip with others
FLUSH_TIMEOUT_SECONDS = 2.0
MAX_PENDING = 10_000
# Entries per script call: ~0.15 ms of Redis time, and ~0.3-0.5 ms of the web process's event
# loop to build (the flush lets requests in between two calls' building).
MAX_PER_CALL = 50
FIELDS = ("name", "team", "channel", "user", "event")  # what a search can filter on
INDEXED_FIELDS = ("name", "team", "channel", "user")  # the event id is the job id
_SPACE = re.compile(r"\s")
_WORD = re.compile(r"[^\W_]{3,32}")  # 3+: "to", "of"... would match everything

# One call writes a flush's entries: ARGV[1] jobs, then the constants, then 6 values per job;
# KEYS the three shared keys, then per job its term keys, its team's channels and its stats hash.
# Each job is written under `pcall`: one refused entry (a key of the wrong type) leaves the
# others of the flush written, as when each was its own call; the reply counts the refused.
RECORD_LUA = """
local n_jobs, ttl_ms, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_teams, max_channels, stats_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local base, max_indexed = ARGV[7], tonumber(ARGV[8])
local teams, all, terms_of = KEYS[1], KEYS[2], KEYS[3]
local function forget(old)
  local list = redis.call('HGET', terms_of, old)
  if list then
    for term in string.gmatch(list, '[^\\n]+') do redis.call('ZREM', base .. term, old) end
    redis.call('HDEL', terms_of, old)
  end
  redis.call('ZREM', all, old)
end
local function record(k, a)
  local id, now, n_terms = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local team, channel, minute = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local excess = redis.call('ZCARD', all) + 1 - max_indexed
  if excess > 0 then
    for _, old in ipairs(redis.call('ZRANGE', all, 0, math.min(excess, 100) - 1)) do forget(old) end
  end
  for _, old in ipairs(redis.call('ZRANGEBYSCORE', all, '-inf', now - ttl_ms, 'LIMIT', 0, 100)) do
    forget(old)
  end
  local names = {}
  for i = 1, n_terms do
    local key = KEYS[k + i]
    redis.call('ZADD', key, now, id)
    redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
    redis.call('PEXPIRE', key, ttl_ms)
    names[i] = string.sub(key, #base + 1)
  end
  redis.call('ZADD', all, now, id)
  redis.call('HSET', terms_of, id, table.concat(names, '\\n'))
  redis.call('PEXPIRE', all, ttl_ms)
  redis.call('PEXPIRE', terms_of, ttl_ms)
  if team ~= '' then
    local channels = KEYS[k + n_terms + 1]
    redis.call('ZADD', teams, now, team)
    redis.call('ZREMRANGEBYRANK', teams, 0, -max_teams - 1)
    redis.call('PEXPIRE', teams, ttl_ms)
    if channel ~= '' then
      redis.call('ZADD', channels, now, channel)
      redis.call('ZREMRANGEBYRANK', channels, 0, -max_channels - 1)
      redis.call('PEXPIRE', channels, ttl_ms)
    end
  end
  local stats = KEYS[k + n_terms + 2]
  redis.call('HINCRBY', stats, minute, 1)
  redis.call('EXPIRE', stats, stats_ttl)
end
local refused, k, a = 0, 3, 8
for _ = 1, n_jobs do
  local n_terms = tonumber(ARGV[a + 3])
  if not pcall(record, k, a) then refused = refused + 1 end
  k, a = k + n_terms + 2, a + 6
end
return refused
"""

# Walk the smallest set newest first (every set scores a job by the same enqueue time) and keep
# the ids that every other set holds, until `limit`. ZCARD, ZREVRANGE and ZSCORE only: within
# the least-privilege ACL of docs/security.md. At most MAX_PER_TERM ids per set are looked at.
SEARCH_LUA = """
local smallest, size = 1, redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do
  local n = redis.call('ZCARD', KEYS[i])
  if n < size then smallest, size = i, n end
end
local limit = tonumber(ARGV[1])
local found = {}
local start = 0
while #found < limit and start < size do
  local ids = redis.call('ZREVRANGE', KEYS[smallest], start, start + 999)
  for _, id in ipairs(ids) do
    local everywhere = true
    for i = 1, #KEYS do
      if i ~= smallest and not redis.call('ZSCORE', KEYS[i], id) then
        everywhere = false
        break
      end
    end
    if everywhere then
      found[#found + 1] = id
      if #found >= limit then break end
    end
  end
  start = start + 1000
end
return found
"""


def _clip(value: object) -> str:
    """A term's value: bounded, without white space (a job's term list is newline-separated)."""
    if value is None or value == "":
        return ""
    text = str(value)[:MAX_TERM_CHARS]
    # Two C checks spare most values (ids, names) the regex: every white space character but
    # " " is non-printable.
    if text.isprintable() and " " not in text:
        return text
    return _SPACE.sub("_", text)


def words(text: str, limit: int = MAX_WORDS) -> list[str]:
    """The distinct lower-cased words of `text` (letters and digits, 3 to 32 long), in order."""
    seen: dict[str, None] = {}
    for match in _WORD.finditer(text.lower()):
        seen.setdefault(match.group(), None)
        if len(seen) >= limit:
            break
    return list(seen)


# A job to index: id, name, data, enqueue time in ms (its keys are built when it is flushed).
Entry = tuple[str, str, Mapping[str, Any], int]


class JobFields(NamedTuple):
    """What identifies a Slack job, wherever its kind keeps it (event, command, interactivity).

    A NamedTuple, not a frozen dataclass: the webhook builds one per stored job, and a frozen
    dataclass' `__init__` sets each field through `object.__setattr__`."""

    name: str
    team: str
    channel: str
    user: str
    event: str
    text: str

    @classmethod
    def of(cls, name: str, data: Mapping[str, Any]) -> JobFields:
        raw_event = data.get("event")
        event: Mapping[str, Any] = raw_event if isinstance(raw_event, Mapping) else {}
        team = data.get("team_id") or _nested(data, "team", "id")
        channel = (event.get("channel") or data.get("channel_id")
                   or _nested(data, "channel", "id") or _nested(data, "container", "channel_id"))
        user = (event.get("user") or data.get("user_id") or _nested(data, "user", "id"))
        text = event.get("text") or data.get("text") or ""
        return cls(_clip(name), _clip(team), _clip(channel), _clip(user),
                   _clip(data.get("event_id")), str(text))

    def terms(self) -> list[str]:
        """The index terms of the job: its non-empty fields (`INDEXED_FIELDS`), then its words."""
        fields = [f"{field}:{value}" for field, value in (
            ("name", self.name), ("team", self.team), ("channel", self.channel),
            ("user", self.user)) if value]
        return fields + [f"word:{word}" for word in words(self.text)]


def _nested(data: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = data.get(outer)
    return value.get(inner) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Filters:
    """A search: exact field values and words that must all be in the text (empty = any)."""

    name: str = ""
    team: str = ""
    channel: str = ""
    user: str = ""
    event: str = ""
    text: str = ""

    def terms(self) -> list[str]:
        """The index terms to intersect (the event id is looked up as a job id instead)."""
        fields = [f"{field}:{_clip(getattr(self, field).strip())}" for field in INDEXED_FIELDS
                  if getattr(self, field).strip()]
        return fields + [f"word:{word}" for word in words(self.text)]

    def __bool__(self) -> bool:
        return bool(self.event.strip() or self.terms())

    def as_dict(self) -> dict[str, str]:
        return {field: getattr(self, field) for field in (*FIELDS, "text")}


class JobIndex:
    """Writes and queries the index of one queue."""

    def __init__(self, client: aioredis.Redis, prefix: str, queue: str,
                 retention_seconds: int) -> None:
        self.client = client
        self.base = f"{prefix}:slackq:{queue}"
        self._term_prefix = self.key("")
        self.retention_ms = retention_seconds * 1000
        self._record = client.register_script(RECORD_LUA)
        self._search = client.register_script(SEARCH_LUA)
        self._pending: list[Entry] = []
        self._flusher: asyncio.Task[None] | None = None
        self.dropped = 0  # entries given up while Redis did not take them

    def key(self, term: str) -> str:
        return f"{self.base}:index:{term}"

    @property
    def all_key(self) -> str:
        return f"{self.base}:index:all"

    @property
    def terms_key(self) -> str:
        return f"{self.base}:index:terms"

    @property
    def teams_key(self) -> str:
        return f"{self.base}:index:teams"

    def channels_key(self, team: str) -> str:
        return f"{self.base}:index:channels:{team}"

    def stats_key(self, hour: int) -> str:
        """The per-minute stored counts of the hour starting at `hour` (epoch seconds)."""
        return f"{self.base}:stats:stored:{hour}"

    def _entry(self, job_id: str, name: str, data: Mapping[str, Any], now_ms: int,
               keys: list[str], args: list[str | int]) -> None:
        """Append one job's part of a `RECORD_LUA` call to `keys` and `args`."""
        fields = JobFields.of(name, data)
        terms = fields.terms()
        minute = now_ms // 60_000 * 60
        keys += [self._term_prefix + term for term in terms]
        keys += [self.channels_key(fields.team), self.stats_key(minute // 3600 * 3600)]
        args += [job_id, now_ms, len(terms), fields.team, fields.channel, minute]

    def _call(self, entries: Iterable[Entry]) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of one `RECORD_LUA` call writing `entries`."""
        keys = [self.teams_key, self.all_key, self.terms_key]
        args: list[str | int] = [0, self.retention_ms, MAX_PER_TERM, MAX_TEAMS,
                                 MAX_CHANNELS_PER_TEAM, STATS_TTL_SECONDS, self.key(""),
                                 MAX_INDEXED]
        for job_id, name, data, now_ms in entries:
            self._entry(job_id, name, data, now_ms, keys, args)
            args[0] = int(args[0]) + 1
        return keys, args

    async def record(self, job_id: str, name: str, data: Mapping[str, Any],
                     now_ms: int | None = None) -> None:
        """Index one stored job now (one round trip)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        keys, args = self._call([(job_id, name, data, now_ms)])
        await self._record(keys=keys, args=args)

    def record_soon(self, job_id: str, name: str, data: Mapping[str, Any]) -> None:
        """Index one stored job within `FLUSH_SECONDS`, in one script call with the jobs stored
        meanwhile: the webhook neither waits for it nor pays a round trip per request, and the
        entry's terms and keys are built at flush time, after the request has been answered.

        Never raises. With `MAX_PENDING` entries waiting (Redis unreachable) new ones are
        dropped: the jobs are stored, only the dashboard's search misses them.
        """
        if len(self._pending) >= MAX_PENDING:
            self.dropped += 1
            return
        self._pending.append((job_id, name, data, int(time.time() * 1000)))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        # Loops: entries queued while a flush was being sent are this task's too (record_soon
        # starts no second flusher while this one runs).
        while self._pending:
            await asyncio.sleep(FLUSH_SECONDS)
            await self._write_pending()

    async def flush(self) -> None:
        """Write every queued entry now, after any background write in flight (before the
        client closes); errors are logged, never raised."""
        if self._flusher is not None and not self._flusher.done():
            await self._flusher  # it writes what it took, and loops until nothing is queued
        await self._write_pending()

    async def _write_pending(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_SECONDS):
                try:
                    refused = await self._send(batch)
                except NoScriptError:  # first use, or Redis restarted: load it, once
                    await self.client.script_load(RECORD_LUA)
                    refused = await self._send(batch)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("jobs_not_indexed", count=len(batch), error=type(exc).__name__)
            return
        if refused:
            log.warning("jobs_not_indexed", count=refused, error="refused by Redis")

    async def _send(self, batch: list[Entry]) -> int:
        """Send `batch` as one script call per `MAX_PER_CALL` entries (one call per flush up to
        500 jobs a second), all in one round trip; the refused count."""
        calls: list[tuple[list[str], list[str | int]]] = []
        for start in range(0, len(batch), MAX_PER_CALL):
            if calls:  # building runs on the event loop: requests go first between two calls
                await asyncio.sleep(0)
            calls.append(self._call(batch[start:start + MAX_PER_CALL]))
        if len(calls) == 1:
            keys, args = calls[0]
            return int(await self.client.evalsha(self._record.sha, len(keys), *keys, *args))
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # Not pipe.evalsha: a Redis Cluster pipeline refuses that method.
                pipe.execute_command("EVALSHA", self._record.sha, len(keys), *keys, *args)
            return sum(int(n) for n in await pipe.execute())

    async def search(self, filters: Filters, limit: int = 500) -> list[str]:
        """Ids of indexed jobs matching every term of `filters`, newest first, at most `limit`.

        Intersected in Redis (`SEARCH_LUA`): only the matches cross the network, and the web
        process's event loop parses at most `limit` ids.
        """
        keys = [self.key(term) for term in filters.terms()]
        if event := _clip(filters.event.strip()):
            return [event] if await self._in_all(event, keys) else []
        if not keys:
            return []
        if len(keys) == 1:
            return _strings(await self.client.zrevrange(keys[0], 0, limit - 1))
        return _strings(await self._search(keys=keys, args=[limit]))

    async def _in_all(self, job_id: str, keys: list[str]) -> bool:
        """Whether every set of `keys` holds `job_id` (no keys: yes)."""
        if not keys:
            return True
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zscore(key, job_id)
            scores = await pipe.execute()
        return all(score is not None for score in scores)

    async def recent_teams(self, limit: int = 50) -> list[str]:
        return _strings(await self.client.zrevrange(self.teams_key, 0, limit - 1))

    async def channels_of(self, teams: list[str], limit: int = 50) -> dict[str, list[str]]:
        """The recent channels of each of `teams` (one round trip)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for team in teams:
                pipe.zrevrange(self.channels_key(team), 0, limit - 1)
            replies = await pipe.execute()
        return {team: _strings(reply) for team, reply in zip(teams, replies, strict=True)}

    async def stored_per_minute(self, since_ms: int, until_ms: int) -> dict[int, int]:
        """Stored-job counts keyed by minute start (epoch seconds) in [since, until)."""
        hours = range(since_ms // 3_600_000 * 3600, until_ms // 1000 + 1, 3600)
        async with self.client.pipeline(transaction=False) as pipe:
            for hour in hours:
                pipe.hgetall(self.stats_key(hour))
            replies: Iterable[dict[str, str]] = await pipe.execute()
        counts: dict[int, int] = {}
        for reply in replies:
            for minute, count in reply.items():
                if since_ms // 1000 <= int(minute) < until_ms // 1000:
                    counts[int(minute)] = int(count)
        return counts


def _strings(members: Iterable[Any]) -> list[str]:
    return [member.decode() if isinstance(member, bytes) else str(member) for member in members]


def retention_seconds(keep_completed_seconds: int, keep_failed_seconds: int) -> int:
    """How long index entries live: as long as the longest-kept job."""
    return max(keep_completed_seconds, keep_failed_seconds)
