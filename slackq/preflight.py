"""Start-up checks that fail fast, in one line, on what retrying cannot fix.

A wrong password, an ACL user without the rights BullMQ needs, or a TLS certificate the client
cannot verify would otherwise surface as a stack trace, or as a web process that answers 503
forever. An unreachable Redis is not fatal here: it may still be starting, and both processes
recover once it answers.
"""

from __future__ import annotations

import asyncio
import ssl

from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from slackq.connection import PATIENT_PROBE, redis_client, redis_location
from slackq.errors import RedisAuthFailed
from slackq.logging import redact
from slackq.settings import Settings

__all__ = ["check_credentials", "describe", "redis_location"]


def describe(url: str, exc: BaseException) -> str:
    """One line naming the server (without password) and what went wrong."""
    detail = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return f"Redis at {redis_location(url)}: {detail}"


def _is_tls_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc)


async def check_credentials(url: str, *,
                            wait_seconds: float = PATIENT_PROBE.connect_timeout) -> bool:
    """PING with the URL's credentials; return whether Redis answered.

    Raise RedisAuthFailed (one line, no password) when Redis refuses the credentials, denies the
    user PING/INFO, or the TLS handshake fails. Return False when it is merely unreachable.
    """
    client = redis_client(url, PATIENT_PROBE.with_timeout(wait_seconds))
    try:
        await client.ping()
        await client.info("server")
    except (AuthenticationError, NoPermissionError) as exc:
        raise RedisAuthFailed(
            f"{describe(url, exc)} (check the user and password in REDIS_URL)") from exc
    except ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisAuthFailed(
                f"{describe(url, exc)} (REDIS_URL needs a password)") from exc
        raise
    except (RedisError, OSError) as exc:
        if _is_tls_failure(exc):
            raise RedisAuthFailed(
                f"{describe(url, exc)} (TLS handshake failed: check rediss:// and ssl_ca_certs)"
            ) from exc
        return False
    finally:
        await client.aclose()
    return True


def check_store_sync(settings: Settings) -> None:
    """Multi-workspace mode: stop at start-up, in one line (ConfigError / StoreError), when the
    installation store's database or `SLACKQ_TOKEN_KEY` does not work."""
    if settings.workspace_mode() == "multi":
        from slackq.installations import check_store  # SQLAlchemy: in this mode only

        asyncio.run(check_store(settings))
