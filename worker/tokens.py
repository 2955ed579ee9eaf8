"""Which bot token a job calls Slack with, in multi-workspace mode.

The installation is the one the envelope was delivered for: `authorizations[0]` of an event
(Bolt's rule: it beats the top-level ids in shared channels), the team/enterprise of a command or
an interaction. An org-wide install is found by its enterprise id (`team_id` None).

Bot tokens are cached per process for `SLACKQ_INSTALLATION_CACHE_SECONDS`; an uninstall or a
revoked bot token is announced to every process, which drops the token at once
(worker/installation_changes.py). With token rotation
on, a token due to expire within `SLACK_TOKEN_REFRESH_SECONDS` is refreshed under a Redis lock
(one refresher per installation across all worker processes; Slack's refresh tokens are
single-use): the lock holder re-reads the store, refreshes only if it is still due, and saves;
the others wait for the lock, re-read, and find the new token.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import structlog
from redis.exceptions import LockError, RedisError
from slack_sdk.errors import SlackClientError, SlackTokenRotationError
from slack_sdk.oauth.installation_store import Bot
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator
from sqlalchemy.exc import SQLAlchemyError

from slackq.errors import StoreError
from slackq.installations import InstallationDb, open_db
from slackq.models import Envelope, EventCallback, InteractionPayload, SlashCommand
from slackq.settings import Settings
from slackq.slack_oauth import OAuthClient
from worker.errors import (
    NoInstallation,
    RedisTransientError,
    SlackPermanentError,
    SlackTransientError,
    TransientError,
)
from worker.installation_changes import InstallationChanges

log = structlog.get_logger(__name__)

# The lock outlives one oauth.v2.access call (10 s timeout) plus the save; a waiter gives up
# (the job is retried with backoff) well within a job's lock.
LOCK_SECONDS = 30
LOCK_WAIT_SECONDS = 15
LOCK_POLL_SECONDS = 0.05  # how often a waiter tries the lock (redis-py polls; no pub/sub)
# A refresh Slack accepted but the store refused is held by its process and saved on its next
# lookup; meanwhile a marker stops the other processes sending the spent refresh token. Past
# this, a process that died holding it is assumed gone (the installation must be made again).
HELD_SECONDS = 3600
SAVE_RETRY_SECONDS = 5.0  # how often a held refresh is offered to the store again
# oauth.v2.access answers that no retry fixes: the installation must be made again.
PERMANENT_REFRESH_ERRORS = frozenset({
    "invalid_refresh_token", "invalid_client_id", "bad_client_secret", "invalid_grant_type",
    "token_revoked", "app_uninstalled", "invalid_auth",
})

Key = tuple[str | None, str | None]  # (enterprise_id, team_id); team None: org-wide install


def installation_key(envelope: Envelope) -> Key:
    """The installation an envelope was delivered for: (enterprise id, team id or None)."""
    enterprise: str | None
    team: str | None
    if isinstance(envelope, EventCallback):
        enterprise, team, org = _event_ids(envelope)
    elif isinstance(envelope, SlashCommand):
        enterprise, team = envelope.enterprise_id, envelope.team_id
        org = str(envelope.is_enterprise_install).lower() == "true"
    else:
        enterprise, team, org = _interaction_ids(envelope)
    return enterprise, (None if org else team)


def _event_ids(envelope: EventCallback) -> tuple[str | None, str | None, bool]:
    auth = envelope.authorizations[0] if envelope.authorizations else None
    if auth is not None and (auth.team_id or auth.enterprise_id):
        org = bool(auth.is_enterprise_install)
        # The authorization's enterprise, even when None: in a channel shared with another org,
        # the top-level `enterprise_id` is the other org's, not the installation's (Bolt's rule).
        enterprise = auth.enterprise_id or (envelope.enterprise_id if org else None)
        return enterprise, auth.team_id, org
    # No authorization (Slack's app_uninstalled / tokens_revoked examples carry none): the
    # top-level ids; an envelope naming an org and no team is the org-wide install's.
    return envelope.enterprise_id, envelope.team_id, envelope.team_id is None


def _interaction_ids(payload: InteractionPayload) -> tuple[str | None, str | None, bool]:
    team_extra = payload.team.model_extra or {} if payload.team else {}
    org = payload.enterprise
    enterprise = ((org if isinstance(org, str) else (org or {}).get("id"))
                  or team_extra.get("enterprise_id"))
    view = payload.view or {}
    team = (view.get("app_installed_team_id") or (payload.team.id if payload.team else None)
            or payload.user.team_id)
    return enterprise, team, bool(payload.is_enterprise_install)


@dataclass
class _Cached:
    bot: Bot
    until: float  # time.monotonic()


class WorkspaceTokens:
    """Bot tokens by installation: cached, refreshed ahead of expiry, forgotten on uninstall."""

    def __init__(self, db: InstallationDb, rotator: AsyncTokenRotator, redis: aioredis.Redis,
                 *, lock_prefix: str, cache_seconds: float, refresh_seconds: int) -> None:
        self.db = db
        self.store = db.installations
        self.rotator = rotator
        self.redis = redis
        self.lock_prefix = lock_prefix
        self.cache_seconds = cache_seconds
        self.refresh_seconds = refresh_seconds
        self._cache: dict[Key, _Cached] = {}
        # Refreshed at Slack, not yet in the store: the pair, and when to try saving it again.
        self._unsaved: dict[Key, tuple[Bot, float]] = {}
        # Uninstalls and revocations reach the other processes' caches at once (`listen()`).
        self.changes = InstallationChanges(redis, lock_prefix, forget=self.forget,
                                           forget_all=self._cache.clear)

    def listen(self) -> None:
        """Drop cached tokens when another process announces a change (worker processes)."""
        self.changes.start()

    async def token_for(self, envelope: Envelope) -> str:
        """The bot token of the envelope's installation; `NoInstallation` when there is none."""
        key = installation_key(envelope)
        bot = await self._save_unsaved(key) if key in self._unsaved else await self._bot(key)
        if self._due(bot):
            bot = await self._refresh(key)
        assert bot.bot_token is not None  # find_bot only returns rows with one
        return bot.bot_token

    def forget(self, what: Key | Envelope) -> None:
        """Drop the cached token of an installation or an envelope's (uninstalled, revoked, or
        refused by Slack)."""
        key = what if isinstance(what, tuple) else installation_key(what)
        self._cache.pop(key, None)
        self._unsaved.pop(key, None)

    async def uninstall(self, envelope: Envelope) -> Key:
        """`app_uninstalled`: every installation and bot of the workspace (or org) goes."""
        key = installation_key(envelope)
        await self._write(self.store.async_delete_all(enterprise_id=key[0], team_id=key[1]))
        self.forget(key)
        await self.changes.announce(key)
        return key

    async def revoke(self, envelope: Envelope, *, user_ids: list[str], bot: bool) -> Key:
        """`tokens_revoked`: the listed users' installations, and the bot when listed."""
        key = installation_key(envelope)
        for user_id in user_ids:
            await self._write(self.store.async_delete_installation(
                enterprise_id=key[0], team_id=key[1], user_id=user_id))
        if bot:
            await self._write(self.store.async_delete_bot(enterprise_id=key[0], team_id=key[1]))
        self.forget(key)
        if bot:  # the cache holds bot tokens only
            await self.changes.announce(key)
        return key

    async def close(self) -> None:
        await self.changes.close()
        await self.db.close()

    def _due(self, bot: Bot) -> bool:
        expires_at = bot.bot_token_expires_at
        return (bot.bot_refresh_token is not None and expires_at is not None
                and expires_at <= time.time() + self.refresh_seconds)

    async def _bot(self, key: Key, *, fresh: bool = False) -> Bot:
        cached = self._cache.get(key)
        if cached is not None and not fresh and cached.until > time.monotonic():
            return cached.bot
        try:
            bot = await self.store.async_find_bot(enterprise_id=key[0], team_id=key[1],
                                                  is_enterprise_install=key[1] is None)
        except (SQLAlchemyError, OSError, StoreError) as exc:
            raise TransientError(f"installation store: {_reason(exc)}") from exc
        if bot is None or not bot.bot_token:
            self.forget(key)
            # The ids come from the job's data: bounded in the failed reason and its log line.
            raise NoInstallation(f"enterprise {(key[0] or '-')[:64]} team {(key[1] or '-')[:64]}")
        self._remember(key, bot)
        return bot

    def _remember(self, key: Key, bot: Bot) -> None:
        if self.cache_seconds > 0:
            self._cache[key] = _Cached(bot, time.monotonic() + self.cache_seconds)

    def _lock_name(self, key: Key) -> str:
        return f"{self.lock_prefix}:slackq:token-refresh:{key[0] or '-'}:{key[1] or '-'}"

    async def _refresh(self, key: Key) -> Bot:
        """Refresh the token of `key` once across all processes; the current bot after it."""
        name = self._lock_name(key)
        lock = self.redis.lock(name, timeout=LOCK_SECONDS, sleep=LOCK_POLL_SECONDS,
                               blocking_timeout=LOCK_WAIT_SECONDS)
        try:
            acquired = await lock.acquire()
        except RedisError as exc:
            raise RedisTransientError(f"token refresh lock: {type(exc).__name__}") from exc
        if not acquired:
            raise TransientError("token refresh: another process held the lock too long")
        try:
            bot = await self._bot(key, fresh=True)  # another process may have refreshed it
            if not self._due(bot):
                return bot
            if await self._held_elsewhere(name):
                raise TransientError("token refresh: another worker holds the refreshed token "
                                     "until the installation store accepts it")
            refreshed = await self._rotate(bot)
            try:
                await self.store.async_save_bot(refreshed)
            except (SQLAlchemyError, OSError, StoreError) as exc:
                # The old refresh token is spent: keep the answer, save it on the next lookup.
                await self._hold(key, refreshed, exc)
                return refreshed
            self._remember(key, refreshed)
            log.info("token_refreshed", enterprise_id=key[0], team_id=key[1],
                     expires_at=refreshed.bot_token_expires_at)
            return refreshed
        finally:
            with contextlib.suppress(LockError, RedisError):
                await lock.release()

    async def _held_elsewhere(self, lock_name: str) -> bool:
        try:
            return bool(await self.redis.exists(f"{lock_name}:held"))
        except RedisError as exc:
            raise RedisTransientError(f"token refresh marker: {type(exc).__name__}") from exc

    async def _hold(self, key: Key, refreshed: Bot, exc: BaseException) -> None:
        """Slack rotated the token but the store refused it: this process keeps the new pair
        (the token works) and marks the installation so that no process sends the spent
        refresh token; `_save_unsaved` saves it when the store accepts writes again."""
        self._unsaved[key] = (refreshed, time.monotonic() + SAVE_RETRY_SECONDS)
        log.error("token_refresh_not_saved", enterprise_id=key[0], team_id=key[1],
                  error=_reason(exc), held_by_this_process=True)
        with contextlib.suppress(RedisError):  # without it, the status quo: see HELD_SECONDS
            await self.redis.set(f"{self._lock_name(key)}:held", "1", ex=HELD_SECONDS)

    async def _save_unsaved(self, key: Key) -> Bot:
        bot, retry_at = self._unsaved[key]
        if time.monotonic() < retry_at:
            return bot
        try:
            await self.store.async_save_bot(bot)
        except (SQLAlchemyError, OSError, StoreError):
            # Still refused: the token is good; a lookup after SAVE_RETRY_SECONDS tries again.
            self._unsaved[key] = (bot, time.monotonic() + SAVE_RETRY_SECONDS)
            return bot
        self._unsaved.pop(key, None)
        self._remember(key, bot)
        with contextlib.suppress(RedisError):  # else the marker expires by itself
            await self.redis.delete(f"{self._lock_name(key)}:held")
        log.info("token_refresh_saved", enterprise_id=key[0], team_id=key[1],
                 expires_at=bot.bot_token_expires_at)
        return bot

    async def _rotate(self, bot: Bot) -> Bot:
        # The rotator decides in whole minutes: ask it for at least our margin.
        minutes = math.ceil(self.refresh_seconds / 60) + 1
        try:
            refreshed = await self.rotator.perform_bot_token_rotation(
                bot=bot, minutes_before_expiration=minutes)
        except SlackTokenRotationError as exc:
            code = str(exc.api_error.response.get("error", "error"))
            if code in PERMANENT_REFRESH_ERRORS:
                raise SlackPermanentError(code, "oauth.v2.access") from exc
            raise SlackTransientError(code, "oauth.v2.access") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SlackTransientError(type(exc).__name__, "oauth.v2.access") from exc
        if refreshed is None:
            raise SlackTransientError("no bot token in the answer", "oauth.v2.access")
        return refreshed

    @staticmethod
    async def _write(awaitable: Awaitable[Any]) -> None:
        try:
            await awaitable
        except (SQLAlchemyError, OSError) as exc:
            raise TransientError(f"installation store: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    # A database error's text may quote the statement's parameters (tokens): the type only.
    return str(exc) if isinstance(exc, StoreError) else type(exc).__name__


async def open_workspace_tokens(settings: Settings, redis: aioredis.Redis) -> WorkspaceTokens:
    """The installation store and token rotation of a worker process (multi-workspace mode)."""
    assert settings.slack_client_id is not None
    db = open_db(settings)
    try:
        await db.create_tables()
    except BaseException:
        await db.close()
        raise
    rotator = AsyncTokenRotator(client_id=settings.slack_client_id,
                                client_secret=settings.client_secret(),
                                client=OAuthClient(settings.slack_api_url))
    tokens = WorkspaceTokens(db, rotator, redis, lock_prefix=settings.queue_prefix,
                             cache_seconds=settings.installation_cache_seconds,
                             refresh_seconds=settings.slack_token_refresh_seconds)
    tokens.listen()
    return tokens
