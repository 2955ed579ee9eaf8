"""The Slack webhook: verify, acknowledge only once the job is stored, enqueue for the worker."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from producers.enqueue import Enqueuer
from producers.verify import RequestVerifier
from slackq.contract import InvalidJobId
from slackq.errors import RedisUnavailable
from slackq.settings import Settings

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status)


async def slack_events(request: Request) -> Response:
    """`POST /slack/events`: the Events API endpoint."""
    state = request.app.state
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        return _error(413, "body too large")
    if not state.verifier.is_valid(body, request.headers):
        log.warning("slack_request_rejected", reason="bad_signature", path=request.url.path)
        return _error(401, "invalid signature")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "body is not JSON")
    if not isinstance(payload, dict):
        return _error(400, "body is not a JSON object")
    kind = payload.get("type")
    if kind == "url_verification":
        return JSONResponse({"challenge": payload.get("challenge")})
    if kind == "event_callback":
        return await _enqueue_event(state.enqueuer, payload, request)
    log.info("slack_request_not_enqueued", type=str(kind)[:64])
    return Response(status_code=200)


async def _enqueue_event(enqueuer: Enqueuer, payload: dict[str, Any], request: Request) -> Response:
    event = payload.get("event")
    event_id = payload.get("event_id")
    if not isinstance(event, dict) or not isinstance(event_id, str) or not event.get("type"):
        return _error(400, "event_callback without event or event_id")
    name = str(event["type"])
    with structlog.contextvars.bound_contextvars(
        team_id=payload.get("team_id"), event_id=event_id, job_id=event_id
    ):
        try:
            job_id = await enqueuer.add(name, payload, event_id)
        except InvalidJobId as exc:
            return _error(400, str(exc))
        except RedisUnavailable as exc:
            log.error("job_not_stored", job_name=name, error=str(exc))
            return _error(503, "could not store the event; please retry")
        log.info(
            "job_enqueued",
            job_name=name,
            retry_num=request.headers.get("x-slack-retry-num"),
            stored_as=job_id,
        )
    return Response(status_code=200)


async def health(_request: Request) -> Response:
    """`GET /health`: liveness (the process answers)."""
    return JSONResponse({"healthy": True})


def create_app(settings: Settings) -> Starlette:
    """The ASGI app for `settings` (the web process reads them once, in `producers.__main__`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.enqueuer = Enqueuer(settings)
        try:
            yield
        finally:
            await app.state.enqueuer.close()

    app = Starlette(
        routes=[
            Route("/slack/events", slack_events, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = RequestVerifier(settings.signing_secret())
    return app
