"""`ACK_DURABILITY`: confirming what a 200 promises before the webhook sends it.

`WAIT` and `WAITAOF` wait for the writes of the connection they are sent on. The webhook's adds
go out on any connection of its pool (batched, `producers/batching.py`), so `AckConfirmer` does
not wait on the add's connection: it writes a mark (`INCR <prefix>:<queue>:ack`) and waits in the
same round trip. Redis replicates and appends to its AOF in one order, so once the mark is on N
replicas (or on disk) so is every write the primary made before it: every add that had already
returned when the mark was sent. Requests arriving while a confirmation is in flight share the
next one, so under load one round trip confirms many jobs (as the batcher's pipelines store many).

The mark confirms only the server it is written on. Behind Sentinel the webhook's clients may
move to a new primary one after the other (a partition: slackq/sentinel_pool.py), so the add
can land on the old primary and the mark on the new one, where `WAIT` succeeds for a job that is
not there: 13-17 of ~110 jobs acknowledged under `replicas:1` were missing after the partition
campaign. So each round first checks, on the same connection and before the mark, that every
waiting request's job is on that server (`EXISTS`); a request whose job is not is not confirmed.

Not confirmed within `ACK_TIMEOUT_MS`: `AckNotConfirmed`, and the webhook answers 503. The job
may well be stored; Slack redelivers the event and the job id makes the second add a no-op.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from slackq.ack import WAITAOF_SINCE, AckDurability
from slackq.connection import (
    PATIENT_PROBE,
    PRODUCER,
    redis_client,
    redis_location,
    same_node_as,
)
from slackq.errors import RedisMisconfigured, RedisUnavailable
from slackq.settings import Settings

log = structlog.get_logger(__name__)


class AckNotConfirmed(RedisUnavailable):
    """The stored job was not confirmed as `ACK_DURABILITY` asks within `ACK_TIMEOUT_MS`."""


@dataclass(frozen=True)
class AckPolicy:
    """What to confirm (`durability`), how long to wait for it, and the mark's key."""

    durability: AckDurability
    timeout_ms: int
    mark_key: str

    def job_key(self, job_id: str) -> str:
        """The key of job `job_id` (BullMQ's `<prefix>:<queue>:<id>`, beside the mark's)."""
        return f"{self.mark_key.removesuffix(':ack')}:{job_id}"

    @classmethod
    def from_settings(cls, settings: Settings) -> AckPolicy:
        return cls(AckDurability.parse(settings.ack_durability), settings.ack_timeout_ms,
                   f"{settings.queue_prefix}:{settings.queue_name}:ack")


class AckConfirmer:
    """Confirms that every add returned so far is as durable as the policy asks."""

    def __init__(self, client: aioredis.Redis, policy: AckPolicy) -> None:
        self.client = client
        self.policy = policy
        self._pending: list[tuple[asyncio.Future[None], str]] = []
        self._sender: asyncio.Task[None] | None = None
        self._failed = False  # the last round failed: a cluster's slot may have moved

    async def confirm(self, job_id: str) -> None:
        """Return once job `job_id` (whose add returned before this call) is confirmed; raise
        AckNotConfirmed (or a RedisError) otherwise."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((future, self.policy.job_key(job_id)))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())
        await future

    async def _send_all(self) -> None:
        while self._pending:  # what arrives during a round joins the next one
            batch, self._pending = self._pending, []
            try:
                missing = await self._round(sorted({key for _, key in batch}))
            except BaseException as exc:  # every waiter must hear of it
                for future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for future, key in batch:
                if future.done():
                    continue
                if key in missing:
                    future.set_exception(AckNotConfirmed(
                        "the job is not on the primary that confirmed the round (it moved)"))
                else:
                    future.set_result(None)

    async def _round(self, keys: list[str]) -> set[str]:
        """Confirm the mark; return those of `keys` the confirming server does not have."""
        durability, timeout_ms = self.policy.durability, self.policy.timeout_ms
        mark = self.policy.mark_key
        # Redis Cluster: WAIT has no key; it must go where the mark (and every job) is.
        on_marks_node = await same_node_as(self.client, mark, refresh=self._failed)
        self._failed = True
        pipe = self.client.pipeline(transaction=False)
        for key in keys:  # before the mark: a job found here is confirmed with it
            pipe.exists(key)
        pipe.incr(mark)
        if durability.fsync:
            pipe.execute_command("WAITAOF", 1, durability.replicas, timeout_ms, **on_marks_node)
        else:
            pipe.execute_command("WAIT", durability.replicas, timeout_ms, **on_marks_node)
        *found, _, reply = await pipe.execute()
        self._failed = False
        if durability.fsync:
            local, replicas = (int(value) for value in reply)
            confirmed = local >= 1 and replicas >= durability.replicas
            got = f"local fsync {local}, replicas {replicas}"
        else:
            confirmed, got = int(reply) >= durability.replicas, f"replicas {int(reply)}"
        if not confirmed:
            raise AckNotConfirmed(f"{durability} not confirmed within {timeout_ms} ms ({got})")
        return {key for key, exists in zip(keys, found, strict=True) if not exists}


def confirmer_for(settings: Settings, attempt_timeout: float) -> AckConfirmer | None:
    """The webhook's confirmer, or None under `memory` (nothing to wait for).

    Its own small pool: its socket timeout must outlast the `WAIT` itself.
    """
    policy = AckPolicy.from_settings(settings)
    if not policy.durability.waits:
        return None
    profile = PRODUCER.with_timeout(policy.timeout_ms / 1000 + attempt_timeout).pooled(4)
    return AckConfirmer(redis_client(settings.redis_url, profile), policy)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0)
                 for part in text.split(".")[:3])


async def require_ack_support(settings: Settings) -> None:
    """Refuse a server that cannot give what ACK_DURABILITY asks. `fsync` modes need `WAITAOF`
    (Redis 7.2) and `appendfsync always`: under `everysec`, Valkey 9.1.2's `WAITAOF` was
    measured returning before the fsync (tests/test_ack_fsync_powerloss.py: 3 to 8 of 60
    acknowledged jobs lost to a power cut). Unreachable: nothing to say yet (the webhook answers
    503 until it is back); `appendfsync` unreadable (CONFIG denied to an ACL user): a warning.
    """
    durability = AckDurability.parse(settings.ack_durability)
    if not durability.fsync:
        return
    client = redis_client(settings.redis_url, PATIENT_PROBE)
    try:
        info = await client.info("server")
        appendfsync = await _appendfsync(client)
    except (RedisError, OSError):
        return
    finally:
        await client.aclose()
    where = redis_location(settings.redis_url)
    server = "valkey" if "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version", "0"))
    if server == "redis" and _version(version) < WAITAOF_SINCE:
        raise RedisMisconfigured(
            f"ACK_DURABILITY={durability} needs WAITAOF (Redis 7.2 or later); the server at "
            f"{where} is Redis {version}")
    if appendfsync is None:
        log.warning("ack_fsync_unverified", ack_durability=str(durability),
                    reason="appendfsync unreadable (CONFIG denied); fsync modes need "
                           "appendfsync always")
    elif appendfsync != "always":
        raise RedisMisconfigured(
            f"ACK_DURABILITY={durability} needs appendfsync always on the server at {where} "
            f"({server} {version} has {appendfsync}: WAITAOF was measured returning before the "
            "fsync under everysec)")


async def _appendfsync(client: aioredis.Redis) -> str | None:
    try:
        value = (await client.config_get("appendfsync")).get("appendfsync")
    except ResponseError:  # CONFIG renamed or denied
        return None
    return str(value) if value else None
