"""The Slack webhook: verify, store the job, and only then acknowledge.

Every request ends in one of: 2xx (the job is stored in Redis, or the request needs no job),
a 4xx from `producers.errors` (bad input: nothing is stored), or 503 (the job could not be stored
within the budget: Slack delivers it again). Routes:

* `POST /slack/events`: Events API JSON (`producers.events`); a form posted here is dispatched
  like the two endpoints below, for apps that point every Slack feature at one URL.
* `POST /slack/commands`: slash commands (`producers.commands`).
* `POST /slack/interactivity`: interactivity payloads (`producers.interactivity`).
* Multi-workspace mode only: `GET /slack/install` and `GET /slack/oauth_redirect`
  (`producers.oauth`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dashboard.app import Dashboard
from producers.body import FORM, JSON, media_type, parse_form, parse_json_object, read_body
from producers.commands import command_job
from producers.enqueue import EnqueuePolicy, Enqueuer
from producers.errors import MalformedRequest, RequestRejected, Unauthorized
from producers.events import event_outcome
from producers.health import OpsEndpoints
from producers.interactivity import interactive_job
from producers.jobs import Outcome, SlackJob
from producers.metrics import ProducerMetrics
from producers.oauth import OAuthFlow, oauth_routes
from producers.verify import RequestVerifier
from slackq.errors import RedisUnavailable
from slackq.settings import Settings

log = structlog.get_logger(__name__)


async def slack_events(request: Request) -> Response:
    """`POST /slack/events`: the Events API (JSON); forms are dispatched by their fields."""
    if media_type(request.headers, (JSON, FORM)) == FORM:
        return await _form_request(request, _any_form_outcome)
    body = await _verified_body(request)
    outcome = event_outcome(parse_json_object(body), request.app.state.metrics)
    return await _store(request, "event", outcome)


async def slack_commands(request: Request) -> Response:
    """`POST /slack/commands`: one job per slash-command invocation."""
    media_type(request.headers, (FORM,))
    return await _form_request(request, _command_outcome)


async def slack_interactivity(request: Request) -> Response:
    """`POST /slack/interactivity`: one job per interactivity payload."""
    media_type(request.headers, (FORM,))
    return await _form_request(request, _interactive_outcome)


FormHandler = Callable[[Request, dict[str, str]], tuple[str, SlackJob]]


async def _form_request(request: Request, handler: FormHandler) -> Response:
    """A form request: Slack's `ssl_check`, or a verified form that `handler` turns into a job.

    `ssl_check=1` (sent when a command URL is saved) gets 200 whatever its signature, as in Bolt:
    it never becomes a job.
    """
    body = await _read_body(request)
    if _is_ssl_check(body):
        return Response(status_code=200)
    _verify(request, body)
    kind, job = handler(request, parse_form(body))
    return await _store(request, kind, job)


def _command_outcome(request: Request, form: dict[str, str]) -> tuple[str, SlackJob]:
    return "command", command_job(form, request.app.state.settings.command_ack_text)


def _interactive_outcome(_request: Request, form: dict[str, str]) -> tuple[str, SlackJob]:
    return "interactive", interactive_job(form)


def _any_form_outcome(request: Request, form: dict[str, str]) -> tuple[str, SlackJob]:
    # By field, never by searching the raw body: a command whose text mentions "payload=" is
    # still a command (Bolt for Python's body parser gets this wrong).
    if "command" in form:
        return _command_outcome(request, form)
    if "payload" in form:
        return _interactive_outcome(request, form)
    raise MalformedRequest("form is neither a slash command nor an interactivity payload")


async def _verified_body(request: Request) -> bytes:
    body = await _read_body(request)
    _verify(request, body)
    return body


async def _read_body(request: Request) -> bytes:
    return await read_body(request, request.app.state.settings.web_body_timeout_seconds)


def _verify(request: Request, body: bytes) -> None:
    if not request.app.state.verifier.is_valid(body, request.headers):
        raise Unauthorized("invalid or missing signature or timestamp")


def _is_ssl_check(body: bytes) -> bool:
    if b"ssl_check=1" not in body:
        return False
    try:
        return parse_form(body).get("ssl_check") == "1"
    except RequestRejected:
        return False


async def _store(request: Request, kind: str, outcome: Outcome) -> Response:
    """Store the job (if any), then answer: the ack if stored, 503 if not."""
    metrics: ProducerMetrics = request.app.state.metrics
    if isinstance(outcome, Response):
        metrics.count(kind, "answered")
        return outcome
    # Ids passed to each line, not bound as contextvars: binding costs on every request, and the
    # Enqueuer binds them itself on its (rare) retry path.
    ids = {**outcome.log_context, "job_id": outcome.job_id}
    try:
        stored_id = await request.app.state.enqueuer.add(outcome)
    except RedisUnavailable as exc:
        metrics.count(kind, "not_stored")
        log.error("job_not_stored", job_name=outcome.name, error=str(exc), **ids)
        return JSONResponse({"ok": False, "error": "not_stored"}, status_code=503)
    metrics.count(kind, "stored")
    log.info("job_stored", job_name=outcome.name, **ids, **_delivery(request, outcome, stored_id))
    return outcome.ack


def _delivery(request: Request, job: SlackJob, stored_id: str) -> dict[str, str]:
    """What a log line adds about a delivery: Slack's retry headers and an existing job's id,
    only when there are some (every field costs on the hot path)."""
    fields = {}
    if (retry_num := request.headers.get("x-slack-retry-num")) is not None:
        fields["retry_num"] = retry_num
        fields["retry_reason"] = request.headers.get("x-slack-retry-reason", "")
    if stored_id != job.job_id:
        fields["stored_as"] = stored_id
    return fields


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRejected)
    request.app.state.metrics.count("any", exc.reason)
    log.warning("slack_request_rejected", path=request.url.path, status=exc.status,
                reason=exc.reason, detail=exc.message)
    headers = {"Connection": "close"} if exc.close_connection else None
    return JSONResponse({"ok": False, "error": exc.reason, "detail": exc.message},
                        status_code=exc.status, headers=headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"ok": False, "error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


async def health(_request: Request) -> Response:
    """`GET /health`: liveness (the process answers)."""
    return JSONResponse({"healthy": True})


def create_app(settings: Settings, policy: EnqueuePolicy | None = None) -> Starlette:
    """The ASGI app for `settings` (the web process reads them once, in `producers.__main__`)."""

    multi = settings.workspace_mode() == "multi"
    metrics = ProducerMetrics()
    ops = OpsEndpoints(settings, metrics.registry)  # /health/redis, /metrics
    admin = Dashboard.for_settings(settings)  # None (and /admin a 404) without ADMIN_PASSWORD

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.enqueuer = Enqueuer(settings, policy)
        if multi:
            app.state.oauth = OAuthFlow(settings)
            await app.state.oauth.open()
        try:
            yield
        finally:
            await app.state.enqueuer.close()
            if multi:
                await app.state.oauth.close()
            await ops.close()
            if admin is not None:  # a mounted app's own lifespan never runs
                await admin.close()

    app = Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/slack/commands", slack_commands, methods=["POST"]),
            Route("/slack/interactivity", slack_interactivity, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            *ops.routes,
            *(oauth_routes() if multi else []),
            *([admin.mount()] if admin is not None else []),
        ],
        exception_handlers={RequestRejected: _rejected,
                            HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = RequestVerifier(settings.signing_secret())
    app.state.metrics = metrics
    return app
