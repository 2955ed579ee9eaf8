"""Every Redis client slackq opens: one factory, `redis_client(url, profile)`, and named profiles.

A profile says how one kind of client behaves. Its numbers are the constants below, except the
command retry, which follows `WORKER_LOCK_DURATION_MS`, and the producer's timeouts, which follow
the enqueue policy (`producers/enqueue.py`). Timeouts are socket / connect.

* `BLOCKING`: the BullMQ Worker, its blocking wait for jobs and its scripts. No socket timeout,
  5 s to connect, TCP keepalive, counts (re)connections. Its retry is the command retry, set by
  `slackq.bullmq_seam.set_worker_retry` once the port has built its clients. The port's single
  connection (`bullmq_connection`), or a lean pool of `WORKER_REDIS_CONNECTIONS` + 1
  (`worker/pool.py`).
* command (`command_profile`): the worker's own commands (limiter, effect log). 5 s / 5 s, TCP
  keepalive, retried ~1 s apart for about a job lock's life (`command_retry`); redis-py's pool.
* `PRODUCER`: the webhook's enqueue. 0.5 s / 0.5 s, no retry (the webhook retries `Queue.add`
  itself within a time budget), TCP keepalive, a lean pool of 64, counts (re)connections.
* `PROBE`: `/health/redis`, the `/metrics` queue counts, an embedded server's start. 1 s / 1 s,
  no retry.
* `PATIENT_PROBE`: the start-up credentials check, doctor's anonymous PING. 5 s / 5 s, no retry.
* `OPERATOR`: the `slackq` CLI, whose Queue commands over many jobs may take seconds. 10 s / 5 s,
  one retry after 0.1-0.5 s.

Two corrections to the BullMQ port's defaults are the reason for `BLOCKING` and `PRODUCER`:

* redis-py 8 sets a 5 s `socket_timeout`; BullMQ's idle blocking `BZPOPMIN` outlives it and new jobs
  then wait up to ~20 s before pickup. BullMQ connections get `socket_timeout=None`.
* The port retries a failed command 20 times with backoff capped at 20 s (~350 s in all). A webhook
  cannot wait that long: the producer's client does not retry at all.

A profile's settings win over the same options in the URL's query string; everything else in the
URL (credentials, database, TLS options, unix socket path) is used as given. Clients that count
their (re)connections for /metrics say so in their profile. Everything slackq reads from Redis is
text: every client decodes responses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff, EqualJitterBackoff, ExponentialBackoff, NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry as SyncRetry

from slackq.errors import RedisMisconfigured
from slackq.metrics import track_connect
from slackq.pool import lean_client


@dataclass(frozen=True)
class RedisRetry:
    """How a client retries a command that failed with a connection error or a timeout (LOADING
    is a connection error too): `retries` more tries, waiting per `backoff`."""

    retries: int = 0
    backoff: Literal["none", "exponential", "equal_jitter"] = "none"
    base: float = 0.0  # seconds
    cap: float = 0.0  # seconds

    def _backoff(self) -> AbstractBackoff:
        if self.backoff == "exponential":
            return ExponentialBackoff(cap=self.cap, base=self.base)
        if self.backoff == "equal_jitter":
            return EqualJitterBackoff(cap=self.cap, base=self.base)
        return NoBackoff()

    def build(self) -> Retry:
        """A redis-py retry for an asyncio client."""
        return Retry(self._backoff(), self.retries)

    def build_sync(self) -> SyncRetry:
        """A redis-py retry for a synchronous client."""
        return SyncRetry(self._backoff(), self.retries)


NO_RETRY = RedisRetry()


@dataclass(frozen=True)
class Profile:
    """One kind of Redis client (see the module's table)."""

    name: str
    socket_timeout: float | None  # None: a command may block for as long as it asks
    connect_timeout: float
    retry: RedisRetry | None  # None: redis-py's default, until the owner sets one
    keepalive: bool = False  # TCP keepalive (TCP connections only)
    pool_size: int | None = None  # a LeanConnectionPool of at most this many; None: redis-py's
    count_connects: bool = False  # slackq_redis_connects / _reconnects

    def with_timeout(self, seconds: float) -> Profile:
        """This profile with both timeouts set to `seconds`."""
        return dataclasses.replace(self, socket_timeout=seconds, connect_timeout=seconds)

    def pooled(self, size: int) -> Profile:
        """This profile over a LeanConnectionPool of at most `size` connections."""
        return dataclasses.replace(self, pool_size=size)


BLOCKING = Profile("blocking", socket_timeout=None, connect_timeout=5, retry=None,
                   keepalive=True, count_connects=True)
PRODUCER_TIMEOUT_SECONDS = 0.5  # the webhook sets its own: WEBHOOK_REDIS_TIMEOUT_SECONDS
PRODUCER = Profile("producer", socket_timeout=PRODUCER_TIMEOUT_SECONDS,
                   connect_timeout=PRODUCER_TIMEOUT_SECONDS, retry=NO_RETRY,
                   keepalive=True, pool_size=64, count_connects=True)
PROBE = Profile("probe", socket_timeout=1.0, connect_timeout=1.0, retry=NO_RETRY)
PATIENT_PROBE = PROBE.with_timeout(5.0)
OPERATOR = Profile("operator", socket_timeout=10, connect_timeout=5,
                   retry=RedisRetry(1, "exponential", base=0.1, cap=0.5))
COMMAND_TIMEOUT_SECONDS = 5.0


def command_retry(lock_duration_ms: int) -> RedisRetry:
    """Redis command retry of a worker: ~1 s apart, for about as long as a job's lock can live.

    The port's own (20 tries, backoff doubling to 20 s) can leave a finished job unrecorded for
    minutes after Redis is back; past the lock's life a retry cannot succeed anyway.
    """
    return RedisRetry(max(3, int(lock_duration_ms / 750)), "equal_jitter", base=0.05, cap=1.0)


def command_profile(lock_duration_ms: int) -> Profile:
    """The worker's own commands (limiter, effect log): bounded, retried as BullMQ's are."""
    return Profile("command", socket_timeout=COMMAND_TIMEOUT_SECONDS,
                   connect_timeout=COMMAND_TIMEOUT_SECONDS,
                   retry=command_retry(lock_duration_ms), keepalive=True)


def redis_kwargs(url: str) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis(...)` from a redis://, rediss:// or unix:// URL.
    """
    parsed: dict[str, Any] = dict(parse_url(url))
    connection_class = parsed.pop("connection_class", None)
    if connection_class is SSLConnection:
        parsed["ssl"] = True
    elif connection_class is UnixDomainSocketConnection:
        parsed["unix_socket_path"] = parsed.pop("path")
    return parsed


def is_unix_socket(url: str) -> bool:
    """Whether `url` names a unix socket (TCP options such as keepalive do not apply)."""
    return "unix_socket_path" in redis_kwargs(url)


def _profile_options(url: str, profile: Profile) -> dict[str, Any]:
    """The options `profile` sets (without retry, which differs for sync clients)."""
    options: dict[str, Any] = {
        "socket_timeout": profile.socket_timeout,
        "socket_connect_timeout": profile.connect_timeout,
    }
    if profile.keepalive and not is_unix_socket(url):
        options["socket_keepalive"] = True
    if profile.count_connects:
        options["redis_connect_func"] = track_connect
    return options


def redis_client(url: str, profile: Profile, *, anonymous: bool = False) -> aioredis.Redis:
    """An asyncio client for `url` that behaves as `profile` says.

    `anonymous`: without the URL's username and password (doctor's "is a password required?").
    """
    options = _profile_options(url, profile)
    if profile.retry is not None:
        options["retry"] = profile.retry.build()
    if anonymous:
        options.update(username=None, password=None)
    if profile.pool_size is not None:
        return lean_client(url, profile.pool_size, decode_responses=True, **options)
    return aioredis.Redis(**{**redis_kwargs(url), **options}, decode_responses=True)


def sync_redis_client(url: str, profile: Profile, *, password: str | None = None) -> redis.Redis:
    """A synchronous client for `url`: for code that cannot await (a Prometheus collector, a
    server's start-up wait, which may run inside another event loop). `password` replaces the
    URL's (an embedded server started with one).

    Only profiles without a lean pool or connection counting: both are asyncio only.
    """
    if profile.pool_size is not None or profile.count_connects:
        raise ValueError(f"the {profile.name} profile has no synchronous client")
    options = _profile_options(url, profile)
    if profile.retry is not None:
        options["retry"] = profile.retry.build_sync()
    if password is not None:
        options["password"] = password
    return redis.Redis(**{**redis_kwargs(url), **options}, decode_responses=True)


def bullmq_connection(url: str) -> dict[str, Any]:
    """The `connection` option of a BullMQ `Worker` / `Queue` for the `BLOCKING` profile, as
    options: the port builds its single-connection client from them.

    It adds `decode_responses` and its own retry itself (passing either is an error); the
    worker then replaces that retry (`slackq.bullmq_seam.set_worker_retry`).
    """
    return {**redis_kwargs(url), **_profile_options(url, BLOCKING)}


async def eviction_policy(client: aioredis.Redis) -> str:
    """The server's `maxmemory-policy`, read through INFO (CONFIG may be renamed in production)."""
    info = await client.info("memory")
    return str(info.get("maxmemory_policy", "unknown"))


async def require_noeviction(client: aioredis.Redis, *, allow_eviction: bool = False) -> str:
    """Refuse a Redis that may evict keys: an evicted job is a lost Slack event."""
    try:
        policy = await eviction_policy(client)
    except ResponseError as exc:
        raise RedisMisconfigured(f"could not read maxmemory-policy: {exc}") from exc
    if policy != "noeviction" and not allow_eviction:
        raise RedisMisconfigured(
            f"Redis maxmemory-policy is {policy!r}; BullMQ needs 'noeviction' "
            "(set maxmemory-policy noeviction, or SLACKQ_ALLOW_EVICTION=1 for development only)"
        )
    return policy
