"""The installation store of multi-workspace mode: slack-sdk's SQLAlchemy stores, tokens encrypted.

One SQLAlchemy async engine (aiosqlite or asyncpg, from `DATABASE_URL`) carries slack-sdk's
`AsyncSQLAlchemyInstallationStore` (tables `slack_installations`, `slack_bots`) and
`AsyncSQLAlchemyOAuthStateStore` (`slack_oauth_states`), with two changes:

* Every token column (and the incoming-webhook URL, which is a credential too) is encrypted with
  `MultiFernet` before it reaches the database, by a column type: it works on every path of the
  store (finds, the user-id merge, the rotator's saves) and its `Text` impl fixes slack-sdk's
  `String(200)`, which PostgreSQL enforces and an encrypted rotating token exceeds.
* Consuming an OAuth state is one `DELETE`: slack-sdk's select-then-delete accepts the same state
  more than once under concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from slack_sdk.oauth.installation_store.sqlalchemy import AsyncSQLAlchemyInstallationStore
from slack_sdk.oauth.sqlalchemy_utils import normalize_datetime_for_db
from slack_sdk.oauth.state_store.sqlalchemy import AsyncSQLAlchemyOAuthStateStore
from sqlalchemy import Dialect, Table, Text, TypeDecorator, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from slackq.errors import ConfigError, StoreError
from slackq.settings import Settings

TOKEN_COLUMNS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token",
                 "incoming_webhook_url")
STATE_SECONDS = 600  # an install must finish within 10 minutes of /slack/install


def async_db_url(raw: str) -> URL:
    """`DATABASE_URL` as SQLAlchemy's async drivers need it.

    Heroku and Railway give `postgres://…` (not a SQLAlchemy dialect name) and sometimes
    `?sslmode=`, which asyncpg calls `ssl`; `sqlite:///` needs the aiosqlite driver.
    """
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://"):]
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError("invalid environment variable DATABASE_URL: not a database URL") from None
    backend = url.drivername.partition("+")[0]
    if backend == "postgresql":
        query = dict(url.query)
        if "sslmode" in query and "ssl" not in query:
            query["ssl"] = query.pop("sslmode")
        return url.set(drivername="postgresql+asyncpg", query=query)
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":  # one database per pooled connection
            raise ConfigError("invalid environment variable DATABASE_URL: SQLite needs a file")
        return url.set(drivername="sqlite+aiosqlite")
    raise ConfigError(f"invalid environment variable DATABASE_URL: unsupported scheme {backend!r}"
                      " (postgresql:// or sqlite:///)")


def make_engine(raw_url: str) -> AsyncEngine:
    """The one engine of a process. SQLite: WAL and a busy timeout, so that the web process and
    several worker processes can share the file."""
    url = async_db_url(raw_url)
    if url.drivername.startswith("sqlite"):
        Path(url.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # pre-ping: managed Postgres (Heroku, Railway) closes idle connections.
    return create_async_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def load_fernet(keys: str) -> MultiFernet:
    """`SLACKQ_TOKEN_KEY`: comma-separated Fernet keys; the first encrypts, all decrypt."""
    try:
        fernets = [Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()]
    except (ValueError, TypeError):
        raise ConfigError("invalid environment variable SLACKQ_TOKEN_KEY: each key must be a "
                          "Fernet key (32 url-safe base64 bytes)") from None
    if not fernets:
        raise ConfigError("missing required environment variable SLACKQ_TOKEN_KEY")
    return MultiFernet(fernets)


class EncryptedText(TypeDecorator[str]):
    """A `Text` column whose values are Fernet tokens. One key set per engine: the compiled-
    statement cache keys on the `fernet` instance."""

    impl = Text
    cache_ok = True

    def __init__(self, fernet: MultiFernet) -> None:
        super().__init__()
        self.fernet = fernet

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.fernet.encrypt(value.encode()).decode("ascii")

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        try:
            return self.fernet.decrypt(value.encode("ascii")).decode()
        except InvalidToken:
            # Never the value: it is a credential, even encrypted.
            raise StoreError("a stored token cannot be decrypted with SLACKQ_TOKEN_KEY (wrong "
                             "key, or an old key dropped before `slackq installations "
                             "reencrypt`)") from None


class EncryptedInstallationStore(AsyncSQLAlchemyInstallationStore):
    """slack-sdk's store with its token columns encrypted (see the module docstring)."""

    def __init__(self, client_id: str, engine: AsyncEngine, fernet: MultiFernet) -> None:
        super().__init__(client_id=client_id, engine=engine)
        encrypted = EncryptedText(fernet)
        for table in self.tables:
            for column in table.c:
                if column.name in TOKEN_COLUMNS:
                    column.type = encrypted

    @property
    def tables(self) -> tuple[Table, Table]:
        return (self.installations, self.bots)

    async def create_tables(self) -> None:
        await super().create_tables()  # type: ignore[no-untyped-call]  # slack-sdk: untyped


class AtomicStateStore(AsyncSQLAlchemyOAuthStateStore):
    """slack-sdk's state store whose `async_consume` accepts a state exactly once, and which
    purges expired states (slack-sdk never does: every visit of /slack/install adds a row)."""

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        state = str(uuid4())
        now = datetime.now(tz=UTC)
        expires = normalize_datetime_for_db(now + timedelta(seconds=self.expiration_seconds))
        async with self.engine.begin() as conn:
            await conn.execute(self.oauth_states.delete().where(
                self.oauth_states.c.expire_at <= normalize_datetime_for_db(now)))
            await conn.execute(self.oauth_states.insert(), {"state": state, "expire_at": expires})
        return state

    async def async_consume(self, state: str) -> bool:
        now = normalize_datetime_for_db(datetime.now(tz=UTC))
        column = self.oauth_states.c
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(self.oauth_states.delete().where(
                    column.state == state, column.expire_at > now))
        except SQLAlchemyError as exc:
            raise StoreError(f"consuming an OAuth state: {type(exc).__name__}") from exc
        return bool(result.rowcount == 1)

    async def create_tables(self) -> None:
        await super().create_tables()  # type: ignore[no-untyped-call]  # slack-sdk: untyped


@dataclass
class InstallationDb:
    """The engine and both stores of one process; `close()` disposes of the engine."""

    engine: AsyncEngine
    installations: EncryptedInstallationStore
    states: AtomicStateStore
    fernet: MultiFernet

    async def create_tables(self) -> None:
        """Create the tables that do not exist yet (idempotent). Two processes starting at once
        may race on PostgreSQL's catalog: the loser finds the tables on its second try."""
        for attempt in (1, 2):
            try:
                await self.installations.create_tables()
                await self.states.create_tables()
                return
            except DBAPIError:
                if attempt == 2:
                    raise

    async def close(self) -> None:
        await self.engine.dispose()


def open_db(settings: Settings) -> InstallationDb:
    """The installation store of `settings` (multi-workspace mode); no connection is made yet."""
    if not settings.slack_client_id:
        raise ConfigError("missing required environment variable SLACK_CLIENT_ID")
    fernet = load_fernet(settings.token_keys())
    engine = make_engine(settings.database())
    return InstallationDb(
        engine=engine,
        installations=EncryptedInstallationStore(settings.slack_client_id, engine, fernet),
        states=AtomicStateStore(expiration_seconds=STATE_SECONDS, engine=engine),
        fernet=fernet,
    )


async def check_store(settings: Settings) -> None:
    """Start-up check of multi-workspace mode: the database answers, the tables exist (created
    if not), and `SLACKQ_TOKEN_KEY` decrypts a stored token. Raises ConfigError or StoreError
    with one line that names the variable and never holds the URL."""
    db = open_db(settings)
    try:
        await db.create_tables()
        async with db.engine.connect() as conn:
            (await conn.execute(select(db.installations.bots.c.bot_token).limit(1))).first()
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"the installation store (DATABASE_URL) failed: {type(exc).__name__}"
                         f"{_cause(exc)}") from None
    finally:
        await db.close()


def _cause(exc: BaseException) -> str:
    """The driver's error type (e.g. `ConnectionRefusedError`, `InvalidPasswordError`): it says
    what went wrong without the message, which may quote the URL or a statement's values."""
    cause = getattr(exc, "orig", None) or exc.__cause__
    return f" ({type(cause).__name__})" if cause is not None else ""


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value is not None else None


async def list_installations(db: InstallationDb) -> list[dict[str, Any]]:
    """One row per installed workspace or org (its newest bot): ids, names, scopes, dates and
    the bot token's expiry; never a token."""
    bots = db.installations.bots
    column = bots.c
    query = (select(column.enterprise_id, column.enterprise_name, column.team_id,
                    column.team_name, column.is_enterprise_install, column.bot_user_id,
                    column.bot_scopes, column.installed_at, column.bot_token_expires_at,
                    column.bot_refresh_token.is_not(None).label("rotating"))
             .where(column.client_id == db.installations.client_id)
             .order_by(column.installed_at.desc()))
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    seen: set[tuple[Any, Any]] = set()
    listed = []
    for row in rows:
        key = (row["enterprise_id"], row["team_id"])
        if key in seen:
            continue
        seen.add(key)
        listed.append({
            "enterprise_id": row["enterprise_id"], "enterprise_name": row["enterprise_name"],
            "team_id": row["team_id"], "team_name": row["team_name"],
            "org_wide": bool(row["is_enterprise_install"]), "bot_user_id": row["bot_user_id"],
            "scopes": row["bot_scopes"], "installed_at": _iso(row["installed_at"]),
            "token_rotation": bool(row["rotating"]),
            "token_expires_at": _iso(row["bot_token_expires_at"]),
        })
    return listed


async def reencrypt(db: InstallationDb) -> int:
    """Re-encrypt every stored token with the first key of `SLACKQ_TOKEN_KEY`; the count of rows.

    Reads the raw column values (bypassing the decrypting type) and writes back
    `MultiFernet.rotate()`: after it, the old keys can be dropped.
    """
    rewritten = 0
    async with db.engine.begin() as conn:
        for table in db.installations.tables:
            columns = [c.name for c in table.c if c.name in TOKEN_COLUMNS]
            rows = (await conn.execute(
                text(f"SELECT id, {', '.join(columns)} FROM {table.name}"))).all()
            assignments = ", ".join(f"{name} = :{name}" for name in columns)
            for row in rows:
                values = {name: _rotated(db.fernet, value)
                          for name, value in zip(columns, row[1:], strict=True)}
                await conn.execute(text(f"UPDATE {table.name} SET {assignments} WHERE id = :id"),
                                   {**values, "id": row[0]})
                rewritten += 1
    return rewritten


def _rotated(fernet: MultiFernet, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return fernet.rotate(value.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise StoreError("a stored token cannot be decrypted with any key of SLACKQ_TOKEN_KEY; "
                         "nothing was rewritten") from None
