"""Every Redis client slackq opens: one factory, `redis_client(url, profile)`, and named profiles.

A profile says how one kind of client behaves. Its numbers are the constants below, except the
command retry, which follows `WORKER_LOCK_DURATION_MS`, and the producer's timeouts, which follow
the enqueue policy (`producers/enqueue.py`). Timeouts are socket / connect.

* `BLOCKING`: the BullMQ Worker, its blocking wait for jobs and its scripts. A 15 s socket
  timeout (`BLOCK_BOUND_SECONDS`: BullMQ blocks for 10 s at most, so only a dead server trips
  it), 5 s to connect, TCP keepalive, counts (re)connections. Its retry is the command retry, set by
  `slackq.bullmq_seam.set_worker_retry` once the port has built its clients. The port's single
  connection (`bullmq_connection`), or a lean pool of `WORKER_REDIS_CONNECTIONS` + 1
  (`worker/pool.py`).
* command (`command_profile`): the worker's own commands (limiter, effect log). 5 s / 5 s, TCP
  keepalive, retried ~1 s apart for about a job lock's life (`command_retry`); a lean pool
  (`COMMAND_POOL_SIZE`, for its cheaper commands: sized so that it never makes a claim wait).
* `PRODUCER`: the webhook's enqueue. 0.5 s / 0.5 s, no retry (the webhook retries `Queue.add`
  itself within a time budget), TCP keepalive, a lean pool of 64, counts (re)connections.
* `PROBE`: `/health/redis`, the `/metrics` queue counts, an embedded server's start. 1 s / 1 s,
  no retry.
* `PATIENT_PROBE`: the start-up credentials check, doctor's anonymous PING. 5 s / 5 s, no retry.
* `DASHBOARD`: the operator's dashboard inside the web process. 5 s / 2 s, no retry, a lean pool
  of 4 (a page that finds them busy waits: it never takes the webhook's connections).
* `OPERATOR`: the `slackq` CLI, whose Queue commands over many jobs may take seconds. 10 s / 5 s,
  one retry after 0.1-0.5 s; bytes that are not UTF-8 decode as backslash escapes (a job may
  hold anything).

Two corrections to the BullMQ port's defaults are the reason for `BLOCKING` and `PRODUCER`:

* redis-py 8 sets a 5 s `socket_timeout`; BullMQ's idle blocking `BZPOPMIN` outlives it and new jobs
  then wait up to ~20 s before pickup. BullMQ connections get a timeout longer than any block
  BullMQ asks for, but bounded: a wait on a primary that died without closing its sockets (a
  machine lost, a partition) ends and reconnects, through Sentinel to the new primary.
* The port retries a failed command 20 times with backoff capped at 20 s (~350 s in all). A webhook
  cannot wait that long: the producer's client does not retry at all.

A profile's settings win over the same options in the URL's query string; everything else in the
URL (credentials, database, TLS options, unix socket path) is used as given.

Sentinel: `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master>[/<db>]`
(`rediss+sentinel://` for TLS to the data nodes and the sentinels; `sentinel_password` in the
query string, which `REDIS_SENTINEL_PASSWORD` fills in, when the sentinels have their own). Every
profile works on it: the client asks the sentinels for the primary whenever a connection opens,
and a connection that meets an error or `READONLY` (a demoted primary) is dropped, so the next
command finds the new primary (redis-py's `SentinelManagedConnection`). Profiles with a lean pool
get `LeanSentinelConnectionPool` (slackq/sentinel_pool.py says why, and why its connections ask
the sentinels on every reconnect). A primary cut off from the sentinels but not from its
clients raises no error at all: with `sentinel_check_seconds` in the URL's query string, which
`REDIS_SENTINEL_CHECK_SECONDS` fills in, every asyncio client also asks the sentinels that
often and leaves a primary a majority of them no longer names (the "primary watch" in
slackq/sentinel_pool.py). Clients that count
their (re)connections for /metrics say so in their profile. Everything slackq reads from Redis is
text: every client decodes responses.

Cluster: `redis+cluster://[[user]:password@]host:port[,host:port…]` (`rediss+cluster://`). Every
profile gives redis-py's `RedisCluster` (typed here as a `Redis`: the commands slackq sends are
the same), its timeouts and connection counting as the profile says; `_cluster_client` says what
differs (retries are attempts, per-node pools, no lean pool). `same_node_as` routes the keyless
`WAIT` / `WAITAOF` to the node holding the queue's slot. URLs are parsed in `slackq.redis_url`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import AbstractBackoff, EqualJitterBackoff, ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.exceptions import ResponseError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

from slackq.errors import RedisMisconfigured
from slackq.metrics import track_connect
from slackq.pool import LeanRedis, lean_client
from slackq.redis_url import URL_SCHEMES as URL_SCHEMES
from slackq.redis_url import ClusterAddress, cluster_address
from slackq.redis_url import SentinelAddress as SentinelAddress
from slackq.redis_url import is_unix_socket as is_unix_socket
from slackq.redis_url import redis_kwargs as redis_kwargs
from slackq.redis_url import redis_location as redis_location
from slackq.redis_url import sentinel_address as sentinel_address
from slackq.redis_url import with_sentinel_password as with_sentinel_password
from slackq.sentinel_pool import (
    ClosesSentinels,
    LeanSentinelConnectionPool,
    SyncSentinelPool,
    connection_class,
)


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
    # How a reply that is not UTF-8 decodes: "strict" raises; the CLI reads whatever a job holds.
    encoding_errors: str = "strict"

    def with_timeout(self, seconds: float) -> Profile:
        """This profile with both timeouts set to `seconds`."""
        return dataclasses.replace(self, socket_timeout=seconds, connect_timeout=seconds)

    def pooled(self, size: int) -> Profile:
        """This profile over a LeanConnectionPool of at most `size` connections."""
        return dataclasses.replace(self, pool_size=size)


BLOCK_BOUND_SECONDS = 15.0  # BullMQ's longest block (10 s) plus a margin
BLOCKING = Profile("blocking", socket_timeout=BLOCK_BOUND_SECONDS, connect_timeout=5, retry=None,
                   keepalive=True, count_connects=True)
PRODUCER_TIMEOUT_SECONDS = 0.5  # the webhook sets its own: WEBHOOK_REDIS_TIMEOUT_SECONDS
PRODUCER = Profile("producer", socket_timeout=PRODUCER_TIMEOUT_SECONDS,
                   connect_timeout=PRODUCER_TIMEOUT_SECONDS, retry=NO_RETRY,
                   keepalive=True, pool_size=64, count_connects=True)
PROBE = Profile("probe", socket_timeout=1.0, connect_timeout=1.0, retry=NO_RETRY)
PATIENT_PROBE = PROBE.with_timeout(5.0)
OPERATOR = Profile("operator", socket_timeout=10, connect_timeout=5,
                   retry=RedisRetry(1, "exponential", base=0.1, cap=0.5),
                   encoding_errors="backslashreplace")
DASHBOARD = Profile("dashboard", socket_timeout=5.0, connect_timeout=2.0, retry=NO_RETRY,
                    pool_size=4, encoding_errors="backslashreplace")
COMMAND_TIMEOUT_SECONDS = 5.0
# Not a bound in practice, as redis-py's own pool is not: connections are opened as concurrent
# commands need them, at most one per job in flight (WORKER_CONCURRENCY <= 1,000) plus the lease
# extension, the wait recorder and the installations' change feed.
COMMAND_POOL_SIZE = 1024


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
                   retry=command_retry(lock_duration_ms), keepalive=True,
                   pool_size=COMMAND_POOL_SIZE)


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
    if profile.encoding_errors != "strict":
        options["encoding_errors"] = profile.encoding_errors
    return options


def redis_client(url: str, profile: Profile, *, anonymous: bool = False,
                 client_name: str | None = None) -> aioredis.Redis:
    """An asyncio client for `url` that behaves as `profile` says.

    `anonymous`: without the URL's username and password (doctor's "is a password required?").
    `client_name`: every connection names itself so (`CLIENT SETNAME` as it connects), for
    `CLIENT LIST` readers such as the dashboard's list of worker processes.
    """
    options = _profile_options(url, profile)
    if client_name:
        options["client_name"] = client_name
    if profile.retry is not None:
        options["retry"] = profile.retry.build()
    if anonymous:
        options.update(username=None, password=None)
    address = sentinel_address(url)
    if address is not None:
        return _sentinel_client(address, profile, options)
    cluster = cluster_address(url)
    if cluster is not None:
        return cast(aioredis.Redis, _cluster_client(cluster, profile, options))
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
    address = sentinel_address(url)
    if address is not None:
        manager = SyncSentinel(  # type: ignore[no-untyped-call]
            address.sentinels, sentinel_kwargs=_sentinel_kwargs(address, profile, sync=True))
        client = manager.master_for(  # type: ignore[no-untyped-call]
            address.master, connection_pool_class=SyncSentinelPool,
            **_node_kwargs(address, options, sync=True))
        return cast(redis.Redis, client)
    cluster = cluster_address(url)
    if cluster is not None:
        kwargs = _cluster_kwargs(cluster, options)
        nodes = [SyncClusterNode(host, port)  # type: ignore[no-untyped-call]
                 for host, port in cluster.nodes]
        return cast(redis.Redis, SyncRedisCluster(startup_nodes=nodes, **kwargs))
    return redis.Redis(**{**redis_kwargs(url), **options}, decode_responses=True)


def bullmq_connection(url: str,
                      client_name: str | None = None) -> dict[str, Any] | aioredis.Redis:
    """The `connection` option of a BullMQ `Worker` / `Queue` for the `BLOCKING` profile, as
    options: the port builds its single-connection client from them.

    It adds `decode_responses` and its own retry itself (passing either is an error); the
    worker then replaces that retry (`slackq.bullmq_seam.set_worker_retry`). The port cannot
    build a Sentinel client from options: for a Sentinel URL this is a client over two
    connections (the blocking wait's and the commands'), as the port's own two. `client_name`:
    as `redis_client`'s.
    """
    if sentinel_address(url) is not None:
        return redis_client(url, BLOCKING.pooled(2), client_name=client_name)
    if cluster_address(url) is not None:
        return redis_client(url, BLOCKING, client_name=client_name)
    named = {"client_name": client_name} if client_name else {}
    return {**redis_kwargs(url), **_profile_options(url, BLOCKING), **named}


def _sentinel_kwargs(address: SentinelAddress, profile: Profile, *,
                     sync: bool = False) -> dict[str, Any]:
    """How to talk to the sentinels: the profile's connect timeout for every command (a
    sentinel answers at once), no retry (the next sentinel is tried instead), TLS as the URL."""
    kwargs: dict[str, Any] = {
        "socket_timeout": profile.connect_timeout,
        "socket_connect_timeout": profile.connect_timeout,
        "password": address.sentinel_password,
        "retry": NO_RETRY.build_sync() if sync else NO_RETRY.build(),
        "decode_responses": True,
    }
    if address.tls:
        kwargs["ssl"] = True
        kwargs.update({k: v for k, v in address.node.items() if k.startswith("ssl_")})
    return kwargs


def _node_kwargs(address: SentinelAddress, options: dict[str, Any], *,
                 sync: bool = False) -> dict[str, Any]:
    kwargs = {**address.node, **options, "decode_responses": True}
    if sync:
        if address.tls:
            kwargs["ssl"] = True  # the pool picks its TLS connection class from it
    else:
        kwargs["connection_class"] = connection_class(address.tls)
    return kwargs


def _sentinel_client(address: SentinelAddress, profile: Profile,
                     options: dict[str, Any]) -> aioredis.Redis:
    """A client of the primary `address` names, for `profile` (with its `options`)."""
    manager = Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels, sentinel_kwargs=_sentinel_kwargs(address, profile))
    kwargs = _node_kwargs(address, options)
    kwargs["primary_check_seconds"] = address.check_seconds
    pool_class: type[SentinelConnectionPool] = ClosesSentinels
    redis_class: type[aioredis.Redis] = aioredis.Redis
    if profile.pool_size is not None:
        pool_class, redis_class = LeanSentinelConnectionPool, LeanRedis  # as lean_client's
        kwargs["max_connections"] = profile.pool_size
        kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)  # as lean
    client = manager.master_for(
        address.master, redis_class=redis_class, connection_pool_class=pool_class, **kwargs)
    return cast(aioredis.Redis, client)


def _cluster_kwargs(address: ClusterAddress, options: dict[str, Any]) -> dict[str, Any]:
    """Options of a cluster client: the URL's, then the profile's, except the connection hook
    (a cluster client takes none: `_cluster_client` installs it). A synchronous cluster client
    connects as it is built (a RedisError then, where other clients connect lazily)."""
    kwargs = {**address.node, **options, "decode_responses": True}
    kwargs.pop("redis_connect_func", None)
    if address.tls:
        kwargs["ssl"] = True
    return kwargs


def _cluster_client(address: ClusterAddress, profile: Profile,
                    options: dict[str, Any]) -> RedisCluster:
    """A Redis Cluster client for `profile` (with its `options`).

    redis-py's cluster client differs from the others in three ways slackq has to know:

    * Its retry is a number of attempts: after a connection error or a timeout it refreshes the
      cluster's slot map (from any node that answers) and tries again at once, without the
      profile's backoff. During a failover, until the replica is promoted, the attempts fail
      fast; callers back off as they do for any Redis error (the worker's outage loop, the
      completion's retry, the webhook's budget).
    * Every node has its own connections, up to 100 each (a command that finds them all busy
      fails rather than waits): the lean pools are for a single Redis. A profile's `pool_size`
      is not applied.
    * It takes no connection hook: the connection counting of a profile that counts is
      installed in the connection options after construction, as redis-py does for its own
      maintenance notifications (the options are shared with the nodes found later).
    """
    kwargs = _cluster_kwargs(address, options)
    hook = options.get("redis_connect_func")
    kwargs.pop("retry", None)
    retry = (profile.retry or NO_RETRY).build()
    nodes = [ClusterNode(host, port) for host, port in address.nodes]
    client = RedisCluster(startup_nodes=nodes, retry=retry, **kwargs)
    if hook is not None:
        client.connection_kwargs["redis_connect_func"] = hook
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_kwargs["redis_connect_func"] = hook
    return client


async def same_node_as(client: aioredis.Redis, key: str, *,
                       refresh: bool = False) -> dict[str, Any]:
    """Keyword arguments that send a keyless command (`WAIT`, `WAITAOF`) to the node serving
    `key`, for a Redis Cluster client ({} for any other).

    A cluster client sends a command without a key to a node of its choosing; in a pipeline
    with `key`'s own commands, this one then goes to the same node on the same connection, so
    it waits for that connection's writes. All of slackq's keys share one slot (QUEUE_PREFIX's
    hash tag), so that node holds every job. A command sent to a named node is never redirected
    nor retried: after it failed, `refresh` reads the cluster's slot map again (a failover may
    have moved the slot).
    """
    if not isinstance(client, RedisCluster):
        return {}
    if refresh:
        await client.aclose()  # forgets the slot map; initialize() reads it again
    await client.initialize()  # a fresh client knows no node yet; later calls return at once
    return {"target_nodes": client.get_node_from_key(key)}


async def eviction_policy(client: aioredis.Redis) -> str:
    """The server's `maxmemory-policy`, read through INFO (CONFIG may be renamed in production).

    On a Redis Cluster, every primary's: the first that is not `noeviction`, if any (a cluster
    client would ask one node of its choosing).
    """
    if isinstance(client, RedisCluster):
        replies = await client.info("memory", target_nodes=RedisCluster.PRIMARIES)
        policies = {str(info.get("maxmemory_policy", "unknown")) for info in replies.values()}
        return next((p for p in sorted(policies) if p != "noeviction"), "noeviction")
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
