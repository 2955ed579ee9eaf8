"""The web process's ASGI app: the Slack webhook, and Starlette for everything else.

The webhook verifies, stores the job, and only then acknowledges (`producers.slack_endpoints`:
`POST /slack/events`, `/slack/commands`, `/slack/interactivity`). Starlette serves the rest:
`GET /health`, `/health/redis` and `/metrics` (`producers.health`), the operator's dashboard
under `/admin` (with `ADMIN_PASSWORD`), and in multi-workspace mode `GET /slack/install` and
`GET /slack/oauth_redirect` (`producers.oauth`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from producers.enqueue import EnqueuePolicy, Enqueuer
from producers.health import OpsEndpoints
from producers.metrics import ProducerMetrics
from producers.slack_endpoints import SlackEndpoint, slack_endpoints
from producers.verify import RequestVerifier
from slackq.settings import Settings

if TYPE_CHECKING:
    from dashboard.app import Dashboard


class WebhookApp(Starlette):
    """Starlette, with a POST to a Slack endpoint handed straight to that endpoint's ASGI app
    (`slack`: path -> app), before Starlette's middleware and router. Any other request, and a
    Slack path under a `root_path`, goes through Starlette, whose routes hold the same apps."""

    def __init__(self, slack: Mapping[str, SlackEndpoint], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slack = dict(slack)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.slack.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"ok": False, "error": exc.detail}, status_code=exc.status_code,
                        headers=exc.headers)


async def health(_request: Request) -> Response:
    """`GET /health`: liveness (the process answers)."""
    return JSONResponse({"healthy": True})


def _dashboard(settings: Settings) -> Dashboard | None:
    """The mounted dashboard, or None; its modules (Jinja2, the views) load only when
    `ADMIN_PASSWORD` is set at all (`Dashboard.for_settings` decides the rest)."""
    if settings.admin_password is None:
        return None
    from dashboard.app import Dashboard

    return Dashboard.for_settings(settings)


def create_app(settings: Settings, policy: EnqueuePolicy | None = None) -> WebhookApp:
    """The ASGI app for `settings` (the web process reads them once, in `producers.__main__`)."""

    multi = settings.workspace_mode() == "multi"
    if multi:
        # SQLAlchemy and slack-sdk's OAuth stores: ~0.8 s of CPU at every start, so only here.
        from producers.oauth import OAuthFlow, oauth_routes
    metrics = ProducerMetrics()
    ops = OpsEndpoints(settings, metrics.registry)  # /health/redis, /metrics
    admin = _dashboard(settings)  # None (and /admin a 404) without ADMIN_PASSWORD

    @asynccontextmanager
    async def lifespan(app: WebhookApp) -> AsyncIterator[None]:
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

    state = State()
    slack = slack_endpoints(state)
    app = WebhookApp(
        slack,
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in slack.items()),
            Route("/health", health, methods=["GET"]),
            *ops.routes,
            *(oauth_routes() if multi else []),
            *([admin.mount()] if admin is not None else []),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state = state  # the endpoints' and Starlette's: one object
    app.state.settings = settings
    app.state.verifier = RequestVerifier(settings.signing_secret())
    app.state.metrics = metrics
    return app
