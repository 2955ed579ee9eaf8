"""The Slack boundary: one Web API call in, a dict or a typed worker error out.

In-call retries: slack-sdk's own `AsyncConnectionErrorRetryHandler`, once. It knows aiohttp's
error types and mostly catches a pooled keep-alive connection that Slack already closed; anything
longer is the job's business (BullMQ backoff), so a worker slot is never held for a long retry.
slack-sdk's `RateLimitErrorRetryHandler` is deliberately not used: it sleeps out `Retry-After`
inside the call, holding the slot. A 429 becomes `SlackRateLimited` and the job is delayed instead.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from worker.errors import (
    SlackPermanentError,
    SlackRateLimited,
    SlackTransientError,
    WorkerError,
)
from worker.metrics import InstrumentedWebClient
from worker.retry import is_permanent_slack_error, retry_after_seconds

# A Slack call that takes longer is abandoned and retried later (the job's lock is renewed while
# it waits, so this bounds how long one call can hold a slot, not correctness).
CALL_TIMEOUT_SECONDS = 10

# slack-sdk formats its debug lines whenever its logger's own level is unset (NOTSET counts as
# "DEBUG or lower"), before logging filters them: per call, a copy of the headers, the request's
# parameters and the whole answer: 45-125 us of CPU per chat.postMessage to a loopback stand-in
# (8-23 %; bench/README.md, issue 18 third pass). Its debug lines would also print Slack's
# answers (hostile data) unbounded. Like slackq/slack_oauth.py, the worker's client gets a
# logger of its own that stays above DEBUG.
_LOG = logging.getLogger("worker.slack_calls")
_LOG.setLevel(logging.INFO)


def open_session() -> aiohttp.ClientSession:
    """One pool of keep-alive connections for every Slack call of a worker process.

    Given no session, slack-sdk opens an aiohttp session for each call and closes it after, so
    every call pays a new TCP (and TLS) connection: in `bench/run.py --sections realistic` the
    Slack stand-in spent 2.3x Node's CPU per call on slackq's calls. Close it at shutdown.
    slack-sdk passes no per-call timeout to a session of its own: the session carries it.
    """
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS))


def make_client(token: str | None, base_url: str,
                session: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """The worker's Web API client: short timeout, one in-call retry on connection errors.

    Without a token (multi-workspace mode) each call names its own (`call_slack(token=...)`).
    With `session` (`open_session()`), calls share its connections.
    """
    return InstrumentedWebClient(  # counts outcomes by method and error code
        token=token,
        base_url=base_url,
        timeout=CALL_TIMEOUT_SECONDS,
        session=session,
        retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=1)],
        logger=_LOG,
    )


def _status_and_headers(response: Any) -> tuple[int | None, Any]:
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    headers = getattr(response, "headers", None) or {}
    return (int(status) if status is not None else None), headers


def _error_code(response: Any) -> str | None:
    data = getattr(response, "data", None)
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return None


def convert_api_error(exc: SlackApiError, method: str) -> WorkerError:
    """Map slack-sdk's `SlackApiError` (any non-ok answer) to the worker's error tree."""
    status, headers = _status_and_headers(exc.response)
    code = _error_code(exc.response)
    if status == 429:
        return SlackRateLimited(retry_after_seconds(headers.get("Retry-After")), method)
    if status is not None and status >= 500:
        return SlackTransientError(f"HTTP {status} {code or ''}".strip(), method)
    if code is not None and is_permanent_slack_error(code):
        return SlackPermanentError(code, method)
    return SlackTransientError(code or f"HTTP {status}", method, refused=status is not None)


def refused(error: WorkerError) -> bool:
    """Slack's answer says the call did not take effect (so it is safe to make it again)."""
    if isinstance(error, SlackRateLimited | SlackPermanentError):
        return True
    return isinstance(error, SlackTransientError) and error.refused


async def call_slack(client: AsyncWebClient, method: str, params: dict[str, Any],
                     token: str | None = None) -> dict[str, Any]:
    """Call `method` with JSON `params`; return the answer's data or raise a `WorkerError`.

    `token` overrides the client's: slack-sdk moves a JSON body's `token` into the Bearer header.
    """
    body = {**params, "token": token} if token is not None else params
    try:
        response = await client.api_call(method, json=body)
    except SlackApiError as exc:
        raise convert_api_error(exc, method) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise SlackTransientError(type(exc).__name__, method) from exc
    except SlackClientError as exc:
        raise SlackTransientError(f"client error {type(exc).__name__}", method) from exc
    data = response.data
    return dict(data) if isinstance(data, dict) else {"ok": True}
