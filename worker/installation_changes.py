"""Installation changes told to every worker process at once, over Redis pub/sub.

Each worker process caches bot tokens (`SLACKQ_INSTALLATION_CACHE_SECONDS`). The process that
handles an `app_uninstalled` / `tokens_revoked` job deletes the installation and publishes its
key on `<QUEUE_PREFIX>:slackq:installations`; every process subscribed drops its cached token at
once, so no process calls Slack with a dead token while its cache lasts.

Pub/sub delivers at most once: a message published while a process is not subscribed (Redis
restarting, a failover, a broken connection) is lost to it. So a process drops its whole cache
whenever it (re)subscribes, and whenever it stops listening; the cache's own time limit remains
the bound when the feed is down (or refused by an ACL without channel rights: logged once, and
the process goes on without it). A missed message thus costs a reread of the store, never a
stale token beyond the cache time. Costs nothing per job: one connection per process, a ping
every `PING_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

log = structlog.get_logger(__name__)

Key = tuple[str | None, str | None]  # (enterprise_id, team_id), as worker.tokens
POLL_SECONDS = 1.0  # one wait for a message; below the command profile's socket timeout
PING_SECONDS = 5.0  # a silently dead connection is found within this (plus the socket timeout)
BACKOFF_CAP_SECONDS = 30.0


def channel_name(prefix: str) -> str:
    """The channel, under the queue's prefix (the ACL user's channel pattern covers it)."""
    return f"{prefix}:slackq:installations"


def encode_key(key: Key) -> str:
    return json.dumps(list(key))


def decode_key(data: Any) -> Key | None:
    """The key of a message, or None for anything that is not one (never trusted blindly)."""
    try:
        value = json.loads(data)
    except (TypeError, ValueError):
        return None
    if (isinstance(value, list) and len(value) == 2
            and all(part is None or isinstance(part, str) for part in value)):
        return value[0], value[1]
    return None


class InstallationChanges:
    """The feed of one worker process: `announce()` a change, `start()` listening to others'."""

    def __init__(self, redis: aioredis.Redis, prefix: str, *, forget: Callable[[Key], None],
                 forget_all: Callable[[], None]) -> None:
        self.redis = redis
        self.channel = channel_name(prefix)
        self.forget = forget
        self.forget_all = forget_all
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def start(self) -> None:
        """Listen in the background until `close()`."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="installation-changes")

    async def announce(self, key: Key) -> None:
        """Tell every process that `key`'s installation changed. A failure is logged: the other
        processes then keep the token until their cache time ends, as without the feed."""
        try:
            await self.redis.publish(self.channel, encode_key(key))
        except RedisError as exc:
            log.warning("installation_change_not_announced", error_type=type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        while True:
            try:
                await self._subscribed()
            except ResponseError as exc:
                # NOPERM: an ACL user without `&<prefix>:*` and +subscribe. Tokens then live
                # their cache time, as without the feed.
                log.warning("installation_changes_unavailable", error=str(exc)[:200],
                            cache="tokens are kept for SLACKQ_INSTALLATION_CACHE_SECONDS")
                return
            except (RedisError, OSError) as exc:
                self._failures += 1
                if self._failures == 1:
                    log.warning("installation_changes_interrupted", error_type=type(exc).__name__)
                await asyncio.sleep(min(BACKOFF_CAP_SECONDS, 0.25 * 2 ** min(self._failures, 7)))

    async def _subscribed(self) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            next_ping = time.monotonic() + PING_SECONDS
            while True:
                message = await pubsub.get_message(timeout=POLL_SECONDS)
                if message is not None:
                    self._received(message)
                if time.monotonic() >= next_ping:
                    await pubsub.ping()
                    next_ping = time.monotonic() + PING_SECONDS
        finally:
            self.forget_all()  # what is published until the next subscription is missed
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py: untyped

    def _received(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Also after redis-py reconnected by itself: messages may have been missed.
            self.forget_all()
            if self._failures:
                log.info("installation_changes_resumed", failures=self._failures)
            self._failures = 0
            log.debug("installation_changes_subscribed", channel=self.channel)
        elif kind == "message" and (key := decode_key(message.get("data"))) is not None:
            self.forget(key)
