"""Helpers for the multi-workspace tests: settings, installations stored directly, envelopes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import redis
from bullmq import Queue
from slack_sdk.oauth.installation_store import Installation
from sqlalchemy import text
from sqlalchemy.engine import make_url

from slackq.installations import open_db
from slackq.settings import Settings
from tests.processes import Proc
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope
from tests.waiting import wait_until
from tests.worker_helpers import JOBS

CLIENT_ID, CLIENT_SECRET = "111.222", "oauth-secret-not-real"
ROUND_SECONDS = 20


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


def events(proc: Proc, name: str) -> list[dict[str, Any]]:
    """The process's log lines of event `name` (JSON lines)."""
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == name]


def handled(proc: Proc, prefix: str, event: str = "job_completed") -> set[str]:
    """The ids starting with `prefix` of the jobs the process logged `event` for."""
    return {str(line.get("job_id")) for line in events(proc, event)
            if str(line.get("job_id")).startswith(prefix)}


class Jobs:
    """`app_mention` jobs of a team added to `queue`, and waits for them (`admin` reads the
    queue's sorted sets under `queue_prefix`)."""

    def __init__(self, queue: Queue, admin: redis.Redis, queue_prefix: str = "bull") -> None:
        self.queue, self.admin, self.count = queue, admin, 0
        self.queue_prefix = queue_prefix

    async def add(self, prefix: str, team: str) -> str:
        self.count += 1
        envelope = mention(f"{prefix}{self.count:03}", team, ts=f"1700000{self.count:03}.0001")
        await self.queue.add("app_mention", envelope, JOBS.for_job(envelope["event_id"]))
        return str(envelope["event_id"])

    def ended_now(self, job_id: str) -> bool:
        sets = (f"{self.queue_prefix}:slack-events:{state}" for state in ("completed", "failed"))
        return any(self.admin.zscore(name, job_id) is not None for name in sets)

    async def ended(self, job_ids: list[str]) -> None:
        await wait_until(lambda: all(self.ended_now(job_id) for job_id in job_ids),
                         ROUND_SECONDS, f"jobs {job_ids} ended")

    async def until_each_handled(self, workers: list[Proc], prefix: str, team: str,
                                 event: str = "job_completed") -> None:
        """Add `team`'s jobs until each process has handled one with `event` (where a job goes
        is BullMQ's choice: wait for the condition, not a count)."""
        async def round_() -> bool:
            await self.ended([await self.add(prefix, team), await self.add(prefix, team)])
            if event != "job_completed":  # a job that should fail but completed: fail now
                assert not any(handled(proc, prefix) for proc in workers), f"a {prefix} job ran"
            return all(handled(proc, prefix, event) for proc in workers)
        await wait_until(round_, 60, f"both processes handled a {prefix} job")


# A store that refuses to save a bot (the database's own refusal, by a trigger), and back.
REFUSE_SAVES = {
    "sqlite": ["CREATE TRIGGER refuse_bots BEFORE UPDATE ON slack_bots "
               "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"],
    "postgresql": ["CREATE FUNCTION refuse_bots() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
                   "CREATE TRIGGER refuse_bots BEFORE UPDATE ON slack_bots FOR EACH ROW "
                   "EXECUTE FUNCTION refuse_bots()"],
}
ACCEPT_SAVES = {"sqlite": ["DROP TRIGGER refuse_bots"],
                "postgresql": ["DROP TRIGGER refuse_bots ON slack_bots",
                               "DROP FUNCTION refuse_bots()"]}


async def store_ddl(settings: Settings, statements: list[str]) -> None:
    """Run `statements` on the installation store's database, in one transaction."""
    db = open_db(settings)
    try:
        async with db.engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await db.close()


async def delete_behind_slackq(settings: Settings, team: str) -> None:
    """Delete a team's installation without telling slackq (no announcement): a control."""
    db = open_db(settings)
    try:
        async with db.engine.begin() as conn:
            for table in ("slack_bots", "slack_installations"):
                await conn.execute(text(f"DELETE FROM {table} WHERE team_id = :team"),
                                   {"team": team})
    finally:
        await db.close()
