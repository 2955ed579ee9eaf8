"""The installation store on real databases (SQLite and PostgreSQL): tokens encrypted at rest,
one-use OAuth states, key rotation, the listing command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from cryptography.fernet import Fernet
from slack_sdk.oauth.installation_store import Installation
from sqlalchemy import text

from slackq.errors import ConfigError, StoreError
from slackq.installations import (
    InstallationDb,
    async_db_url,
    list_installations,
    open_db,
    reencrypt,
)
from slackq.settings import Settings
from tests.databases import db_url, pg_database, token_key  # noqa: F401 - fixtures
from tests.processes import process_env

CLIENT_ID = "111.222"
BOT = "xoxe.xoxb-1-" + "B" * 140  # a rotating token: longer than slack-sdk's String(200) once
REFRESH = "xoxe-1-" + "R" * 140   # encrypted
USER = "xoxp-1-user-token-not-real"
HOOK = "https://hooks.slack.com/services/T1/B1/secret"


def store_settings(url: str, key: str) -> Settings:
    return Settings(slack_client_id=CLIENT_ID, slack_client_secret="s3cret",
                    database_url=url, SLACKQ_TOKEN_KEY=key)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[InstallationDb]:  # noqa: F811 - fixture
    store = open_db(store_settings(db_url, token_key()))
    await store.create_tables()
    yield store
    await store.close()


def installation(team: str | None = "T1", *, enterprise: str | None = None,
                 org: bool = False, expires_in: int | None = 43_200) -> Installation:
    return Installation(
        app_id="A1", enterprise_id=enterprise, team_id=team, team_name=f"name-{team}",
        bot_token=BOT, bot_id="B1", bot_user_id="U0BOT", bot_scopes="chat:write",
        bot_refresh_token=REFRESH if expires_in else None, bot_token_expires_in=expires_in,
        user_id="U1", user_token=USER, incoming_webhook_url=HOOK, is_enterprise_install=org)


async def raw_rows(db: InstallationDb) -> list[str]:
    """Every stored row of both tables, as the database holds it (no decrypting type)."""
    out = []
    async with db.engine.connect() as conn:
        for table in ("slack_installations", "slack_bots"):
            rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
            out += [json.dumps([str(value) for value in row]) for row in rows]
    return out


async def test_tokens_are_encrypted_at_rest_and_read_back(db: InstallationDb) -> None:
    await db.installations.async_save(installation())
    rows = await raw_rows(db)
    assert len(rows) == 2
    for secret in (BOT, REFRESH, USER, HOOK, "xox"):
        assert not any(secret in row for row in rows), secret
    bot = await db.installations.async_find_bot(enterprise_id=None, team_id="T1")
    assert bot is not None and (bot.bot_token, bot.bot_refresh_token) == (BOT, REFRESH)
    found = await db.installations.async_find_installation(enterprise_id=None, team_id="T1",
                                                           user_id="U1")
    assert found is not None
    assert (found.bot_token, found.user_token, found.incoming_webhook_url) == (BOT, USER, HOOK)


async def test_org_wide_install_is_found_by_enterprise(db: InstallationDb) -> None:
    await db.installations.async_save(installation(None, enterprise="E1", org=True))
    bot = await db.installations.async_find_bot(enterprise_id="E1", team_id="T9",
                                                is_enterprise_install=True)
    assert bot is not None and bot.bot_token == BOT
    assert await db.installations.async_find_bot(enterprise_id="E1", team_id="T9") is None


async def test_a_state_is_accepted_once_even_concurrently(db: InstallationDb) -> None:
    state = await db.states.async_issue()
    results = await asyncio.gather(*[db.states.async_consume(state) for _ in range(10)])
    assert sorted(results) == [False] * 9 + [True]
    assert await db.states.async_consume("never-issued") is False


async def test_an_expired_state_is_refused(db: InstallationDb) -> None:
    state = await db.states.async_issue()
    async with db.engine.begin() as conn:
        await conn.execute(db.states.oauth_states.update().values(
            expire_at=datetime(2000, 1, 1)))
    assert await db.states.async_consume(state) is False
    await db.states.async_issue()  # purges what expired
    async with db.engine.connect() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM slack_oauth_states"))).scalar()
    assert count == 1


async def test_reencrypt_lets_the_old_key_go(db_url: str) -> None:  # noqa: F811 - fixture
    old, new = token_key(), token_key()
    first = open_db(store_settings(db_url, old))
    await first.create_tables()
    await first.installations.async_save(installation())
    await first.close()
    rotating = open_db(store_settings(db_url, f"{new},{old}"))
    assert await reencrypt(rotating) == 2
    await rotating.close()
    only_new = open_db(store_settings(db_url, new))
    try:
        bot = await only_new.installations.async_find_bot(enterprise_id=None, team_id="T1")
        assert bot is not None and bot.bot_token == BOT
    finally:
        await only_new.close()
    wrong = open_db(store_settings(db_url, token_key()))
    try:
        with pytest.raises(StoreError, match="SLACKQ_TOKEN_KEY"):
            await wrong.installations.async_find_bot(enterprise_id=None, team_id="T1")
    finally:
        await wrong.close()


async def test_listing_shows_teams_and_expiry_never_a_token(db: InstallationDb) -> None:
    await db.installations.async_save(installation("T1"))
    await db.installations.async_save(installation(None, enterprise="E1", org=True,
                                                   expires_in=None))
    rows = await list_installations(db)
    assert {(r["enterprise_id"], r["team_id"], r["org_wide"]) for r in rows} == {
        (None, "T1", False), ("E1", None, True)}
    [t1] = [r for r in rows if r["team_id"] == "T1"]
    expires = time.time() + 43_200
    assert t1["token_rotation"] is True and t1["token_expires_at"] is not None
    assert abs(_epoch(t1["token_expires_at"]) - expires) < 120
    assert "xox" not in json.dumps(rows)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_cli_lists_without_tokens(db_url: str) -> None:  # noqa: F811 - fixture
    key = token_key()
    store = open_db(store_settings(db_url, key))
    await store.create_tables()
    await store.installations.async_save(installation("T7"))
    await store.close()
    env = process_env(SLACK_CLIENT_ID=CLIENT_ID, SLACK_CLIENT_SECRET="s3cret",
                      DATABASE_URL=db_url, SLACKQ_TOKEN_KEY=key)
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "slackq.cli", "installations"], env=env,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "team T7 (name-T7)" in result.stdout and "token expires" in result.stdout
    assert "xox" not in result.stdout + result.stderr
    again = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "slackq.cli", "installations", "--json"],
        env={**env, "SLACKQ_TOKEN_KEY": f"{token_key()},{key}"}, capture_output=True,
        text=True, timeout=60)
    assert [row["team_id"] for row in json.loads(again.stdout)] == ["T7"]


@pytest.mark.parametrize(("raw", "driver", "query"), [
    ("postgres://u:p@db.example:5432/d", "postgresql+asyncpg", {}),
    ("postgresql://u:p@h/d?sslmode=require", "postgresql+asyncpg", {"ssl": "require"}),
    ("sqlite:////tmp/x.db", "sqlite+aiosqlite", {}),
])
def test_database_urls_of_heroku_railway_and_sqlite(raw: str, driver: str,
                                                    query: dict[str, str]) -> None:
    url = async_db_url(raw)
    assert (url.drivername, dict(url.query)) == (driver, query)
    assert "p@" not in repr(url)


@pytest.mark.parametrize("raw", ["mysql://u@h/d", "sqlite://", "not a url"])
def test_unusable_database_urls_are_named(raw: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        async_db_url(raw)


def test_a_bad_token_key_is_named() -> None:
    with pytest.raises(ConfigError, match="SLACKQ_TOKEN_KEY"):
        open_db(store_settings("sqlite:////tmp/never.db", "not-a-fernet-key"))
    assert Fernet(token_key().encode())  # the helper's keys are valid


def test_listed_names_are_escaped_for_the_terminal() -> None:
    from slackq.cli import _installation_lines

    hostile = {"enterprise_id": "E1", "enterprise_name": "\x1b]0;pwned\x07Org\nfake line",
               "team_id": None, "team_name": None, "org_wide": True, "installed_at": "2026",
               "token_expires_at": None}
    [line] = _installation_lines([hostile])
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert line.startswith("org E1 (\\x1b]0;pwned\\x07Org\\nfake line)")
