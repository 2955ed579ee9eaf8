"""Real databases for the installation store: a SQLite file, or a PostgreSQL database of its own.

PostgreSQL is the machine's server on 127.0.0.1:5432 (trust auth, user postgres; `PG_ADMIN_URL`
overrides). Each test module that uses `db_url` gets a uniquely named database, dropped after.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"


@pytest.fixture(scope="module")
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for this test module; its URL (`postgresql://…`)."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"slackq_{module}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_url(name)
    finally:
        asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


async def _reset(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute("DROP TABLE IF EXISTS slack_installations, slack_bots, "
                           "slack_oauth_states")
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """`DATABASE_URL` of an empty store, on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_database")
    asyncio.run(_reset(url))
    return url


def token_key() -> str:
    return Fernet.generate_key().decode()
