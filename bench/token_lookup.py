"""What a job's bot-token lookup costs in multi-workspace mode (worker/tokens.py).

    .venv/bin/python -m bench.token_lookup [TEAMS] [LOOKUPS]

Stores TEAMS installations (default 50, tokens encrypted as in production) in a SQLite file and
in a fresh PostgreSQL database (`PG_ADMIN_URL`, default the local server), then times LOOKUPS
(default 2000) calls of `WorkspaceTokens.token_for` over the teams in turn: uncached (every
lookup reads the store and decrypts: `SLACKQ_INSTALLATION_CACHE_SECONDS=0`, or the first job of a
team after the cache expired) and cached, one at a time and 10 in flight. Prints wall and CPU
microseconds per lookup.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from cryptography.fernet import Fernet
from slack_sdk.oauth.installation_store import Installation
from slack_sdk.oauth.token_rotation.async_rotator import AsyncTokenRotator

from slackq.installations import open_db
from slackq.models import Envelope, parse_envelope
from slackq.settings import Settings
from tests.databases import PG_ADMIN_URL, pg_url
from tests.slack_requests import app_mention_envelope
from worker.tokens import WorkspaceTokens


async def _stored(url: str, teams: int) -> Settings:
    settings = Settings(slack_client_id="111.222", slack_client_secret="s", database_url=url,
                        SLACKQ_TOKEN_KEY=Fernet.generate_key().decode())
    db = open_db(settings)
    await db.create_tables()
    for n in range(teams):
        await db.installations.async_save(Installation(
            app_id="A1", team_id=f"T{n:04}", bot_token=f"xoxb-{n}-" + "x" * 40, bot_id="B1",
            bot_user_id="U0BOT", user_id="U1"))
    await db.close()
    return settings


async def _time(tokens: WorkspaceTokens, envelopes: list[Envelope], lookups: int,
                in_flight: int) -> tuple[float, float]:
    """Wall and CPU µs per lookup."""
    async def one(n: int) -> None:
        await tokens.token_for(envelopes[n % len(envelopes)])

    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, lookups, in_flight):
        await asyncio.gather(*(one(n) for n in range(start, min(lookups, start + in_flight))))
    return ((time.perf_counter() - wall) * 1e6 / lookups,
            (time.process_time() - cpu) * 1e6 / lookups)


async def measure(name: str, url: str, teams: int, lookups: int) -> list[str]:
    settings = await _stored(url, teams)
    envelopes = [parse_envelope(app_mention_envelope(f"Ev{n}", team_id=f"T{n:04}"))
                 for n in range(teams)]
    rows = []
    for label, cache in (("uncached", 0.0), ("cached", 3600.0)):
        db = open_db(settings)
        # No lookup here is due for rotation: the Redis client and rotator are never used.
        tokens = WorkspaceTokens(db, AsyncTokenRotator(client_id="1", client_secret="s"),
                                 aioredis.Redis(), lock_prefix="bull", cache_seconds=cache,
                                 refresh_seconds=0)
        await _time(tokens, envelopes, teams, 1)  # warm: the pool's connections, the cache
        for in_flight in (1, 10):
            wall, cpu = await _time(tokens, envelopes, lookups, in_flight)
            rows.append(f"| {name} | {label} | {in_flight} | {wall:,.0f} | {cpu:,.0f} |")
        await tokens.close()
    return rows


async def main(teams: int, lookups: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="slackq-bench-") as tmp:
        rows += await measure("SQLite (aiosqlite)", f"sqlite:///{Path(tmp) / 's.db'}",
                              teams, lookups)
    database = f"slackq_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{database}"')
    try:
        rows += await measure("PostgreSQL (asyncpg)", pg_url(database), teams, lookups)
    finally:
        await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        await admin.close()
    print(f"{teams} installations, {lookups} lookups per row\n")
    print("| store | lookup | in flight | wall µs per lookup | CPU µs per lookup |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args + [50, 2000][len(args):])))
