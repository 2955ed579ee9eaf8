"""What `slackq status` and `slackq doctor` read from a Redis, and doctor's production checks.

Facts come from INFO (always allowed to BullMQ's user) and, when the server permits it,
`CONFIG GET appendfsync` (INFO does not report the fsync policy; CONFIG may be renamed in
production, in which case the policy is reported as unknown and doctor warns instead of failing).
The checks are pure functions of the facts, so they are tested without a server too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from slackq.connection import PATIENT_PROBE, eviction_policy, redis_client

# BullMQ's recommended minimum; below it the port falls back to slower blocking commands.
MIN_VERSION = (6, 2, 0)
SAFE_FSYNC = frozenset({"everysec", "always"})


@dataclass(frozen=True)
class RedisFacts:
    """The production-relevant state of one Redis server."""

    version: str
    eviction_policy: str
    maxmemory: int
    used_memory: int
    aof_enabled: bool
    aof_last_write_status: str
    aof_delayed_fsync: int
    appendfsync: str | None  # None when CONFIG is renamed or denied
    auth_required: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def gather_facts(client: aioredis.Redis, url: str) -> RedisFacts:
    """Read the facts through `client` (authenticated with the URL's credentials)."""
    info = await client.info()
    return RedisFacts(
        version=str(info.get("redis_version", "0")),
        eviction_policy=await eviction_policy(client),  # a cluster's: every primary's
        maxmemory=int(info.get("maxmemory", 0)),
        used_memory=int(info.get("used_memory", 0)),
        aof_enabled=int(info.get("aof_enabled", 0)) == 1,
        aof_last_write_status=str(info.get("aof_last_write_status", "unknown")),
        aof_delayed_fsync=int(info.get("aof_delayed_fsync", 0)),
        appendfsync=await _appendfsync(client),
        auth_required=await _auth_required(url),
    )


async def _appendfsync(client: aioredis.Redis) -> str | None:
    try:
        value = (await client.config_get("appendfsync")).get("appendfsync")
    except ResponseError:  # CONFIG renamed ("unknown command") or denied by ACL (NOPERM)
        return None
    return str(value) if value else None


async def _auth_required(url: str) -> bool:
    """Whether a client with no credentials at all is refused (the URL's host, port and TLS)."""
    anonymous = redis_client(url, PATIENT_PROBE, anonymous=True)
    try:
        await anonymous.ping()
    except AuthenticationError:
        return True
    except ResponseError as exc:
        return "NOAUTH" in str(exc) or "NOPERM" in str(exc)
    except RedisError:
        return True  # not reachable without credentials, e.g. a proxy that requires them
    finally:
        await anonymous.aclose()
    return False


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def evaluate(facts: RedisFacts) -> list[Check]:
    """Doctor's checks, one per production requirement."""
    checks = [
        _check(facts.eviction_policy == "noeviction", "eviction policy",
               f"maxmemory-policy {facts.eviction_policy}",
               "BullMQ needs noeviction: any other policy can evict queued jobs"),
        _check(facts.aof_enabled, "append-only file",
               "appendonly yes" if facts.aof_enabled else "appendonly no",
               "without AOF a crash loses every job since the last snapshot"),
        _check(facts.maxmemory > 0, "maxmemory", f"maxmemory {facts.maxmemory}",
               "unbounded memory ends with the OS killing Redis; set ~88% of the instance"),
        _check(facts.auth_required, "authentication",
               "clients without credentials are refused" if facts.auth_required
               else "anyone who reaches the port can read and delete jobs",
               "set --requirepass from the environment, or an ACL user (docs/security.md)"),
        _check(_version_tuple(facts.version) >= MIN_VERSION, "version",
               f"Redis {facts.version}",
               "BullMQ recommends 6.2 or later"),
        _check(facts.aof_last_write_status in {"ok", "unknown"}, "last AOF write",
               f"aof_last_write_status {facts.aof_last_write_status}",
               "Redis could not write its AOF: check disk space and permissions"),
    ]
    if facts.appendfsync is None:
        checks.append(Check("fsync policy", Level.WARN,
                            "unknown (CONFIG is renamed or denied); expect everysec"))
    else:
        checks.append(_check(facts.appendfsync in SAFE_FSYNC, "fsync policy",
                             f"appendfsync {facts.appendfsync}",
                             "appendfsync no leaves flushing to the OS (up to ~30 s lost)"))
    return checks


def _check(passed: bool, name: str, detail: str, advice: str) -> Check:
    if passed:
        return Check(name, Level.OK, detail)
    return Check(name, Level.FAIL, f"{detail}: {advice}")
