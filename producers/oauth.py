"""The install flow of multi-workspace mode (Bolt's paths), on slack-sdk's OAuth pieces.

* `GET /slack/install`: a new state (stored server-side, one use, 10 minutes, and bound to this
  browser by a cookie), then 302 to Slack's authorize page.
* `GET /slack/oauth_redirect?code=…&state=…`: the state must match the cookie and be consumed
  from the store; the code is exchanged with `oauth.v2.access`; the installation is stored
  (tokens encrypted); a short page, or 302 to `SLACK_INSTALL_SUCCESS_URL`.

Anything that goes wrong answers a 4xx page (5xx when the store or Slack is down) and stores
nothing. Everything echoed into a page is escaped: the query string is the visitor's.
"""

from __future__ import annotations

import html
from urllib.parse import quote

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.oauth import AuthorizeUrlGenerator, OAuthStateUtils
from slack_sdk.oauth.installation_store import Installation
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from slackq.errors import StoreError
from slackq.installations import STATE_SECONDS, InstallationDb, open_db
from slackq.settings import Settings
from slackq.slack_oauth import OAuthClient, installation_from

log = structlog.get_logger(__name__)
REASON_LIMIT = 100  # Slack's `error` parameter is echoed, escaped and bounded
ID_LIMIT = 64  # team and enterprise ids in log lines


class OAuthFlow:
    """What the two routes share: the stores, the authorize URL, the cookie rules, Slack."""

    def __init__(self, settings: Settings, db: InstallationDb | None = None) -> None:
        assert settings.slack_client_id is not None
        self.settings = settings
        self.client_id = settings.slack_client_id
        self.db = db or open_db(settings)
        self.cookies = OAuthStateUtils(expiration_seconds=STATE_SECONDS)
        self.urls = AuthorizeUrlGenerator(
            client_id=self.client_id,
            # The generator pastes values in unencoded: encode the one that may hold `&`.
            redirect_uri=quote(settings.slack_redirect_uri, safe="") if (
                settings.slack_redirect_uri) else None,
            scopes=_scopes(settings.slack_scopes),
            user_scopes=_scopes(settings.slack_user_scopes),
            authorization_url=settings.slack_authorize_url,
        )
        self.slack = OAuthClient(settings.slack_api_url)

    async def open(self) -> None:
        await self.db.create_tables()

    async def close(self) -> None:
        await self.db.close()

    async def exchange(self, code: str) -> Installation:
        answer = await self.slack.oauth_v2_access(
            client_id=self.client_id, client_secret=self.settings.client_secret(), code=code,
            redirect_uri=self.settings.slack_redirect_uri)
        return installation_from(dict(answer.data) if isinstance(answer.data, dict) else {})


def _scopes(csv: str) -> list[str]:
    return [scope.strip() for scope in csv.split(",") if scope.strip()]


async def install(request: Request) -> Response:
    """`GET /slack/install`: start an install."""
    flow: OAuthFlow = request.app.state.oauth
    try:
        state = await flow.db.states.async_issue()
    except SQLAlchemyError as exc:
        log.error("oauth_store_failed", step="issue_state", error_type=type(exc).__name__)
        return _page(503, "Cannot start the installation", "Please try again in a minute.")
    response = RedirectResponse(flow.urls.generate(state), status_code=302)
    response.headers["set-cookie"] = flow.cookies.build_set_cookie_for_new_state(state)
    return response


async def oauth_redirect(request: Request) -> Response:
    """`GET /slack/oauth_redirect`: finish an install."""
    flow: OAuthFlow = request.app.state.oauth
    query = request.query_params
    if error := query.get("error"):
        return _failed(flow, 403, "denied", f"Slack answered: {error[:REASON_LIMIT]}")
    state = query.get("state") or ""
    if not flow.cookies.is_valid_browser(state, {"cookie": request.headers.getlist("cookie")}):
        return _failed(flow, 400, "invalid_browser",
                       "This link was not started from this browser; start again.")
    try:
        consumed = await flow.db.states.async_consume(state)
    except StoreError:
        return _failed(flow, 503, "storage_error", "Please try again in a minute.")
    if not consumed:
        return _failed(flow, 400, "invalid_state", "This link has expired or was used already.")
    code = query.get("code")
    if not code:
        return _failed(flow, 400, "missing_code", "Slack sent no authorization code.")
    try:
        installation = await flow.exchange(code)
    except SlackApiError as exc:
        answer = exc.response.data if isinstance(exc.response.data, dict) else {}
        reason = str(answer.get("error", "error"))[:REASON_LIMIT]
        return _failed(flow, 400, "invalid_code", f"Slack refused the code: {reason}")
    except (SlackClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.error("oauth_exchange_failed", error_type=type(exc).__name__)
        return _failed(flow, 502, "exchange_failed", "Slack could not be reached; start again.")
    if not installation.bot_token or not (installation.team_id or installation.enterprise_id):
        return _failed(flow, 400, "invalid_code", "Slack's answer holds no bot token.")
    try:
        await flow.db.installations.async_save(installation)
    except SQLAlchemyError as exc:
        log.error("oauth_store_failed", step="save", error_type=type(exc).__name__)
        return _failed(flow, 503, "storage_error", "Please try again in a minute.")
    log.info("slack_app_installed", team_id=_bounded(installation.team_id),
             enterprise_id=_bounded(installation.enterprise_id),
             org_wide=installation.is_enterprise_install,
             token_rotation=installation.bot_refresh_token is not None)
    return _installed(flow, installation)


def _bounded(value: str | None) -> str | None:
    return value[:ID_LIMIT] if value is not None else None


def _installed(flow: OAuthFlow, installation: Installation) -> Response:
    response: Response
    if flow.settings.slack_install_success_url:
        response = RedirectResponse(flow.settings.slack_install_success_url, status_code=302)
    else:
        where = (installation.enterprise_name or installation.enterprise_id
                 if installation.is_enterprise_install
                 else installation.team_name or installation.team_id)
        response = _page(200, "Installed", f"The app is installed in {html.escape(str(where))}."
                                           " You can close this window.")
    response.headers["set-cookie"] = flow.cookies.build_set_cookie_for_deletion()
    return response


def _failed(flow: OAuthFlow, status: int, reason: str, detail: str) -> Response:
    log.warning("slack_install_failed", status=status, reason=reason)
    response = _page(status, "The installation did not complete",
                     f'{html.escape(detail)} <a href="/slack/install">Install again</a>')
    response.headers["set-cookie"] = flow.cookies.build_set_cookie_for_deletion()
    return response


def _page(status: int, title: str, paragraph: str) -> HTMLResponse:
    """A short page; `paragraph` is HTML whose outside values the caller escaped."""
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1><p>{paragraph}</p></body></html>")
    return HTMLResponse(page, status_code=status,
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def oauth_routes() -> list[Route]:
    return [Route("/slack/install", install, methods=["GET"]),
            Route("/slack/oauth_redirect", oauth_redirect, methods=["GET"])]
