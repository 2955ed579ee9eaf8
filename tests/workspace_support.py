"""Helpers for the multi-workspace tests: settings, installations stored directly, envelopes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slack_sdk.oauth.installation_store import Installation
from sqlalchemy import text
from sqlalchemy.engine import make_url

from slackq.installations import open_db
from slackq.settings import Settings
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope

CLIENT_ID, CLIENT_SECRET = "111.222", "oauth-secret-not-real"


def multi_settings(redis_url: str, api_url: str, database: str, key: str,
                   **extra: Any) -> Settings:
    return Settings(redis_url=redis_url, slack_signing_secret=SIGNING_SECRET,
                    slack_client_id=CLIENT_ID, slack_client_secret=CLIENT_SECRET,
                    slack_api_url=api_url, database_url=database, SLACKQ_TOKEN_KEY=key,
                    log_format="console", **extra)


def multi_env(database: str, key: str) -> dict[str, str]:
    """The environment of a multi-workspace process (besides REDIS_URL and SLACK_API_URL)."""
    return {"SLACK_CLIENT_ID": CLIENT_ID, "SLACK_CLIENT_SECRET": CLIENT_SECRET,
            "DATABASE_URL": database, "SLACKQ_TOKEN_KEY": key}


async def install(settings: Settings, *, team: str | None, token: str,
                  enterprise: str | None = None, refresh_token: str | None = None,
                  expires_in: int | None = None) -> None:
    """Store an installation as the install flow would (org-wide when `team` is None)."""
    db = open_db(settings)
    try:
        await db.installations.create_tables()
        await db.installations.async_save(Installation(
            app_id="A0APP001", enterprise_id=enterprise, team_id=team, bot_token=token,
            bot_id="B0BOT", bot_user_id="U0BOT", bot_scopes="chat:write", user_id="U0INSTALLER",
            bot_refresh_token=refresh_token, bot_token_expires_in=expires_in,
            is_enterprise_install=team is None, installed_at=time.time()))
    finally:
        await db.close()


def mention(event_id: str, team: str, **kwargs: Any) -> dict[str, Any]:
    return app_mention_envelope(event_id, team_id=team, **kwargs)


def org_mention(event_id: str, enterprise: str, workspace: str) -> dict[str, Any]:
    """An event of an org-wide install: authorizations name the enterprise, no team."""
    envelope = app_mention_envelope(event_id, team_id=workspace)
    envelope["enterprise_id"] = enterprise
    envelope["authorizations"] = [{"enterprise_id": enterprise, "team_id": None,
                                   "user_id": "U0BOT", "is_bot": True,
                                   "is_enterprise_install": True}]
    return envelope


def lifecycle_event(event_id: str, team: str, event: dict[str, Any]) -> dict[str, Any]:
    """`app_uninstalled` / `tokens_revoked` as Slack sends them (no authorizations needed)."""
    return {"token": "legacy", "team_id": team, "api_app_id": "A0APP001", "type": "event_callback",
            "event_id": event_id, "event_time": int(time.time()), "event": event}


def org_lifecycle_event(event_id: str, enterprise: str, event: dict[str, Any],
                        *, authorized: bool = True) -> dict[str, Any]:
    """`app_uninstalled` / `tokens_revoked` of an org-wide install: the envelope names the org
    only (no `team_id`), with or without `authorizations`."""
    envelope: dict[str, Any] = {
        "token": "legacy", "enterprise_id": enterprise, "api_app_id": "A0APP001",
        "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
        "event": event}
    if authorized:
        envelope["authorizations"] = [{"enterprise_id": enterprise, "team_id": None,
                                       "user_id": "U0BOT", "is_bot": True,
                                       "is_enterprise_install": True}]
    return envelope


async def raw_store(settings: Settings) -> str:
    """Everything the store holds, as the database holds it: each row of both tables read
    without the decrypting column type, and for SQLite the bytes of the file and its WAL."""
    db = open_db(settings)
    out: list[str] = []
    try:
        async with db.engine.connect() as conn:
            for table in ("slack_installations", "slack_bots"):
                rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
                out += [str(value) for row in rows for value in row]
    finally:
        await db.close()
    url = make_url(settings.database())
    if url.drivername.startswith("sqlite"):
        for path in (Path(str(url.database)), Path(f"{url.database}-wal")):
            if path.exists():
                out.append(path.read_bytes().decode("latin-1"))
    return "\n".join(out)
