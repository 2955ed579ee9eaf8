"""The Slack boundary: one Web API call in, a dict or a typed worker error out.

A call is one JSON POST on the worker's long-lived aiohttp session (`open_session`), made here
rather than through `AsyncWebClient.api_call`. slack-sdk stays the Web API package (the client
object handlers get, its token, base URL, headers, proxy and retry handlers, its error types for
`convert_api_error`), but its per-call layers cost ~27 % of a worker's Python samples in the
realistic drain (bench/README.md, issue 18 second and fourth passes): argument dicts rebuilt
and copied, the user agent recomputed, a deprecation check, a retry state and request object
and every retry handler consulted on every answer, an `AsyncSlackResponse` built and validated.
What this keeps of them: the same request (URL, JSON body, `Authorization: Bearer`, the
client's headers and default parameters, proxy, TLS context), the same success test (HTTP 200
and `ok: true`), and the same error semantics: `ok: false` and HTTP errors map as
`convert_api_error` maps slack-sdk's `SlackApiError`; 429 with `Retry-After` becomes
`SlackRateLimited`, 5xx `SlackTransientError`.

In-call retries: the client's retry handlers (slack-sdk's `AsyncConnectionErrorRetryHandler`,
once), consulted as slack-sdk consults them when the request fails. It knows aiohttp's error
types and mostly catches a pooled keep-alive connection that Slack already closed; anything
longer is the job's business (BullMQ backoff), so a worker slot is never held for a long retry.
slack-sdk's `RateLimitErrorRetryHandler` is deliberately not used: it sleeps out `Retry-After`
inside the call, holding the slot. A 429 becomes `SlackRateLimited` and the job is delayed
instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urljoin

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from yarl import URL

from worker.errors import (
    SlackPermanentError,
    SlackRateLimited,
    SlackTransientError,
    WorkerError,
)
from worker.metrics import InstrumentedWebClient, error_label, record_slack_call
from worker.retry import is_permanent_slack_error, retry_after_seconds

# A Slack call that takes longer is abandoned and retried later (the job's lock is renewed while
# it waits, so this bounds how long one call can hold a slot, not correctness).
CALL_TIMEOUT_SECONDS = 10

# slack-sdk formats its debug lines whenever its logger's own level is unset (NOTSET counts as
# "DEBUG or lower"), before logging filters them: per call, a copy of the headers, the request's
# parameters and the whole answer: 45-125 us of CPU per chat.postMessage to a loopback stand-in
# (8-23 %; bench/README.md, issue 18 third pass). Its debug lines would also print Slack's
# answers (hostile data) unbounded. Like slackq/slack_oauth.py, the worker's client gets a
# logger of its own that stays above DEBUG (for calls a handler makes through the client).
_LOG = logging.getLogger("worker.slack_calls")
_LOG.setLevel(logging.INFO)

_JSON = "application/json;charset=utf-8"
_URLS: dict[tuple[str, str], URL] = {}  # (base URL, method) -> parsed once


def open_session() -> aiohttp.ClientSession:
    """One pool of keep-alive connections for every Slack call of a worker process.

    Without it every call would pay a new TCP (and TLS) connection: in `bench/run.py --sections
    realistic` the Slack stand-in spent 2.3x Node's CPU per call on slackq's calls when slack-sdk
    opened a session per call. Close it at shutdown. The session carries the call timeout.
    Slack's Web API sets no cookies a call needs: a `DummyCookieJar` spares aiohttp the jar's
    filtering and updating on every request and answer.
    """
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECONDS),
                                 cookie_jar=aiohttp.DummyCookieJar())


def make_client(token: str | None, base_url: str,
                session: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """The worker's Web API client: short timeout, one in-call retry on connection errors.

    Without a token (multi-workspace mode) each call names its own (`call_slack(token=...)`).
    With `session` (`open_session()`), calls share its connections.
    """
    return InstrumentedWebClient(  # counts outcomes of calls made through it by method and code
        token=token,
        base_url=base_url,
        timeout=CALL_TIMEOUT_SECONDS,
        session=session,
        retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=1)],
        logger=_LOG,
    )


def convert_answer(status: int | None, headers: Any, data: Any, method: str) -> WorkerError:
    """Map a Web API answer that is not a success (not HTTP 200 with `ok: true`) to the
    worker's error tree."""
    code = data.get("error") if isinstance(data, dict) else None
    code = code if isinstance(code, str) else None
    if status == 429:
        return SlackRateLimited(retry_after_seconds(headers.get("Retry-After")), method)
    if status is not None and status >= 500:
        return SlackTransientError(f"HTTP {status} {code or ''}".strip(), method)
    if code is not None and is_permanent_slack_error(code):
        return SlackPermanentError(code, method)
    return SlackTransientError(code or f"HTTP {status}", method, refused=status is not None)


def convert_api_error(exc: SlackApiError, method: str) -> WorkerError:
    """Map slack-sdk's `SlackApiError` (any non-ok answer) to the worker's error tree."""
    response = exc.response
    status = getattr(response, "status_code", None) or getattr(response, "status", None)
    headers = getattr(response, "headers", None) or {}
    return convert_answer(int(status) if status is not None else None, headers,
                          getattr(response, "data", None), method)


def refused(error: WorkerError) -> bool:
    """Slack's answer says the call did not take effect (so it is safe to make it again)."""
    if isinstance(error, SlackRateLimited | SlackPermanentError):
        return True
    return isinstance(error, SlackTransientError) and error.refused


async def call_slack(client: AsyncWebClient, method: str, params: dict[str, Any],
                     token: str | None = None) -> dict[str, Any]:
    """Call `method` with JSON `params`; return the answer's data or raise a `WorkerError`.

    `token` overrides the client's, as does a `token` in `params` (slack-sdk moves a JSON
    body's `token` into the Bearer header; so does this).
    """
    if "token" in params:
        params = dict(params)
        token = params.pop("token") if token is None else token
        params.pop("token", None)
    try:
        status, headers, data = await _post(client, method, params,
                                            client.token if token is None else token)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        record_slack_call(method, "transport_error")
        raise SlackTransientError(type(exc).__name__, method) from exc
    if status == 200 and isinstance(data, dict) and data.get("ok"):
        record_slack_call(method, "ok")
        return data
    record_slack_call(method, _outcome(status, data))
    raise convert_answer(status, headers, data, method)


def _outcome(status: int, data: Any) -> str:
    """The metrics label of a non-ok answer (`worker.metrics.slack_outcome`'s)."""
    if status == 429:
        return "ratelimited"
    if status >= 500:
        return "http_5xx"
    return error_label(data.get("error") if isinstance(data, dict) else None)


async def _post(client: AsyncWebClient, method: str, params: dict[str, Any],
                token: str | None) -> tuple[int, Any, Any]:
    """POST `params` as JSON to `method`; (status, headers, parsed body: a dict, None for a
    body that is not JSON, {} for a non-JSON content type, as slack-sdk reads them)."""
    key = (client.base_url, method)
    url = _URLS.get(key)
    if url is None:
        url = _URLS.setdefault(key, URL(urljoin(client.base_url, method.lstrip("/"))))
    body = {**client.default_params, **params} if client.default_params else params
    headers = {**client.headers, "Content-Type": _JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body, separators=(",", ":")).encode()
    session = client.session
    if session is not None and not session.closed:
        return await _send(client, session, url, data, headers)
    async with aiohttp.ClientSession(  # a client without the worker's session (tests, tools)
            timeout=aiohttp.ClientTimeout(total=client.timeout)) as own:
        return await _send(client, own, url, data, headers)


async def _send(client: AsyncWebClient, session: aiohttp.ClientSession, url: URL, data: bytes,
                headers: dict[str, str]) -> tuple[int, Any, Any]:
    state: RetryState | None = None
    while True:
        try:
            async with session.post(url, data=data, headers=headers, proxy=client.proxy,
                                    ssl=True if client.ssl is None else client.ssl) as answer:
                raw = await answer.read()
                if "json" not in answer.content_type:
                    return answer.status, answer.headers, {}
                try:
                    return answer.status, answer.headers, json.loads(raw)
                except ValueError:
                    return answer.status, answer.headers, None
        except Exception as exc:
            state = state or RetryState()
            if not await _retry(client.retry_handlers, state, url, headers, exc):
                raise


async def _retry(handlers: list[AsyncRetryHandler], state: RetryState, url: URL,
                 headers: dict[str, str], error: Exception) -> bool:
    """The first of `handlers` that takes `error` prepares the next attempt (it sleeps its
    interval): slack-sdk's loop, for failed requests only."""
    request = HttpRequest(method="POST", url=str(url), headers=dict[str, str | list[str]](headers))
    for handler in handlers:
        if await handler.can_retry_async(state=state, request=request, error=error):
            await handler.prepare_for_next_attempt_async(state=state, request=request,
                                                         error=error)
            state.next_attempt_requested = False
            return True
    return False
