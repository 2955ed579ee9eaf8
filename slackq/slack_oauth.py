"""`oauth.v2.access`, shared by the install flow (codes) and the worker (refresh tokens).

slack-sdk's own `oauth_v2_access` builds `aiohttp.BasicAuth`, deprecated since aiohttp 3.14 (a
warning is an error in the tests); this client sends the same Basic header, built by hand. It
holds no token, and its logger stays above DEBUG: slack-sdk's debug lines print the form (codes,
refresh tokens) and the answer (access tokens).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from slack_sdk.oauth.installation_store import Installation
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

OAUTH_TIMEOUT_SECONDS = 10
_LOG = logging.getLogger("slackq.slack_oauth")
_LOG.setLevel(logging.INFO)


def basic_auth(client_id: str, client_secret: str) -> str:
    """The `Authorization` header value Slack recommends for `oauth.v2.access`."""
    raw = f"{client_id}:{client_secret}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class OAuthClient(AsyncWebClient):
    """A token-less Web API client whose `oauth_v2_access` authenticates with a Basic header."""

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url=base_url, timeout=OAUTH_TIMEOUT_SECONDS, logger=_LOG)

    async def oauth_v2_access(
        self, *, client_id: str, client_secret: str, code: str | None = None,
        redirect_uri: str | None = None, grant_type: str | None = None,
        refresh_token: str | None = None, **kwargs: Any,
    ) -> AsyncSlackResponse:
        data = {"code": code, "redirect_uri": redirect_uri, "grant_type": grant_type,
                "refresh_token": refresh_token, **kwargs}
        return await self.api_call(
            "oauth.v2.access", data={k: v for k, v in data.items() if v is not None},
            headers={"Authorization": basic_auth(client_id, client_secret)})


def installation_from(answer: dict[str, Any]) -> Installation:
    """The Installation an `oauth.v2.access` code exchange describes (Bolt's mapping)."""
    enterprise = answer.get("enterprise") or {}
    team = answer.get("team") or {}
    installer = answer.get("authed_user") or {}
    hook = answer.get("incoming_webhook") or {}
    return Installation(
        app_id=answer.get("app_id"),
        enterprise_id=enterprise.get("id"), enterprise_name=enterprise.get("name"),
        team_id=team.get("id"), team_name=team.get("name"),
        bot_token=answer.get("access_token"), bot_id=answer.get("bot_id"),
        bot_user_id=answer.get("bot_user_id"), bot_scopes=answer.get("scope") or "",
        bot_refresh_token=answer.get("refresh_token"),
        bot_token_expires_in=answer.get("expires_in"),
        user_id=str(installer.get("id") or ""), user_token=installer.get("access_token"),
        user_scopes=installer.get("scope") or "",
        user_refresh_token=installer.get("refresh_token"),
        user_token_expires_in=installer.get("expires_in"),
        incoming_webhook_url=hook.get("url"), incoming_webhook_channel=hook.get("channel"),
        incoming_webhook_channel_id=hook.get("channel_id"),
        incoming_webhook_configuration_url=hook.get("configuration_url"),
        is_enterprise_install=bool(answer.get("is_enterprise_install")),
        token_type=answer.get("token_type"),
    )
