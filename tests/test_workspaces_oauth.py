"""The install flow through the web app, against the Slack stand-in and real databases."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import text

from harness.slack_standin import FakeSlack, Grant
from producers.app import create_app
from slackq.embedded import RedisProcess
from slackq.installations import open_db
from slackq.settings import Settings
from tests.databases import db_url, pg_database, token_key  # noqa: F401 - fixtures
from tests.workspace_support import CLIENT_ID, CLIENT_SECRET, multi_settings

AUTHORIZE = "https://slack.example/oauth/v2/authorize"
REDIRECT = "https://app.example/slack/oauth_redirect?x=1&y=2"


@pytest.fixture
def oauth_settings(redis_server: RedisProcess, fake_slack: FakeSlack,
                   db_url: str) -> Settings:  # noqa: F811 - fixture
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    return multi_settings(redis_server.url, fake_slack.base_url, db_url, token_key(),
                          slack_redirect_uri=REDIRECT, slack_authorize_url=AUTHORIZE)


@asynccontextmanager
async def browser(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A browser on the web app of `settings` (lifespan running). https: the state cookie is
    `Secure`, which a client only sends back over https."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://slackq.test", timeout=10) as client:
            yield client


@pytest.fixture
async def web(oauth_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(oauth_settings) as client:
        yield client


async def stored(settings: Settings) -> dict[str, list[Any]]:
    """What the database holds: the bots' (enterprise, team) and every raw row, as text."""
    db = open_db(settings)
    try:
        async with db.engine.connect() as conn:
            bots = (await conn.execute(text(
                "SELECT enterprise_id, team_id FROM slack_bots"))).all()
            raw = []
            for table in ("slack_installations", "slack_bots"):
                rows = (await conn.execute(text(f"SELECT * FROM {table}"))).all()
                raw += [json.dumps([str(v) for v in row]) for row in rows]
        return {"bots": [tuple(b) for b in bots], "raw": raw}
    finally:
        await db.close()


async def start_install(web: httpx.AsyncClient) -> str:
    response = await web.get("/slack/install")
    assert response.status_code == 302
    return parse_qs(urlsplit(response.headers["location"]).query)["state"][0]


async def finish(web: httpx.AsyncClient, state: str, code: str) -> httpx.Response:
    return await web.get("/slack/oauth_redirect", params={"code": code, "state": state})


async def test_install_redirects_to_slack_with_a_state_bound_to_the_browser(
        web: httpx.AsyncClient) -> None:
    response = await web.get("/slack/install")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == AUTHORIZE
    query = parse_qs(location.query, keep_blank_values=True)
    assert query["client_id"] == [CLIENT_ID]
    assert query["scope"] == ["app_mentions:read,chat:write,commands"]
    assert query["user_scope"] == [""]
    assert query["redirect_uri"] == [REDIRECT]  # encoded whole, its own query intact
    cookie = response.headers["set-cookie"]
    assert f"slack-app-oauth-state={query['state'][0]}" in cookie
    assert "HttpOnly" in cookie and "Secure" in cookie and "Max-Age=600" in cookie


async def test_an_install_is_stored_encrypted(web: httpx.AsyncClient, fake_slack: FakeSlack,
                                        oauth_settings: Settings) -> None:
    state = await start_install(web)
    code = fake_slack.grant_code(Grant(team_id="T0ALPHA", expires_in=43_200))
    response = await finish(web, state, code)
    assert response.status_code == 200, response.text
    assert "Team T0ALPHA" in response.text
    assert "slack-app-oauth-state=deleted" in response.headers["set-cookie"]
    [call] = fake_slack.calls_to("oauth.v2.access")
    assert call.headers["Authorization"].startswith("Basic ")
    assert (call.args["code"], call.args["redirect_uri"]) == (code, REDIRECT)
    assert "client_secret" not in call.args
    db = (await stored(oauth_settings))
    assert db["bots"] == [(None, "T0ALPHA")]
    [token] = fake_slack.issued_tokens
    assert not any(token in row or "xox" in row for row in db["raw"])


async def test_a_reused_state_is_refused_and_nothing_more_is_stored(
        web: httpx.AsyncClient, fake_slack: FakeSlack, oauth_settings: Settings) -> None:
    state = await start_install(web)
    assert (await finish(web, state, fake_slack.grant_code())).status_code == 200
    # A replay with the cookie still in hand: the store, not the cookie, refuses it.
    web.cookies.clear()
    again = await web.get("/slack/oauth_redirect",
                          headers={"cookie": f"slack-app-oauth-state={state}"},
                          params={"code": fake_slack.grant_code(Grant(team_id="T0OTHER")),
                                  "state": state})
    assert again.status_code == 400
    assert "expired or was used" in again.text
    assert (await stored(oauth_settings))["bots"] == [(None, "T0TEAM001")]
    assert len(fake_slack.calls_to("oauth.v2.access")) == 1


@pytest.mark.parametrize("cookie", [None, "slack-app-oauth-state=someone-elses"])
async def test_a_state_from_another_browser_is_refused(
        web: httpx.AsyncClient, fake_slack: FakeSlack, oauth_settings: Settings,
        cookie: str | None) -> None:
    state = await start_install(web)
    web.cookies.clear()
    headers = {"cookie": cookie} if cookie else {}
    response = await web.get("/slack/oauth_redirect", headers=headers,
                       params={"code": fake_slack.grant_code(), "state": state})
    assert response.status_code == 400
    assert (await stored(oauth_settings))["bots"] == []
    assert fake_slack.calls_to("oauth.v2.access") == []


async def test_an_unknown_state_is_refused(web: httpx.AsyncClient, fake_slack: FakeSlack,
                                     oauth_settings: Settings) -> None:
    response = await web.get("/slack/oauth_redirect",
                             headers={"cookie": "slack-app-oauth-state=forged"},
                             params={"code": fake_slack.grant_code(), "state": "forged"})
    assert response.status_code == 400
    assert (await stored(oauth_settings))["bots"] == []


async def test_denied_is_a_4xx_page_with_slacks_reason_escaped(
        web: httpx.AsyncClient, oauth_settings: Settings) -> None:
    state = await start_install(web)
    response = await web.get("/slack/oauth_redirect",
                       params={"error": "access_denied<script>alert(1)</script>", "state": state})
    assert response.status_code == 403
    assert "access_denied&lt;script&gt;" in response.text and "<script>" not in response.text
    assert (await stored(oauth_settings))["bots"] == []


async def test_a_failed_exchange_stores_nothing(web: httpx.AsyncClient, fake_slack: FakeSlack,
                                          oauth_settings: Settings) -> None:
    state = await start_install(web)
    response = await finish(web, state, "code-never-granted")
    assert response.status_code == 400
    assert "invalid_code" in response.text
    assert (await stored(oauth_settings))["bots"] == []


async def test_an_org_wide_install_is_stored_for_the_enterprise(
        web: httpx.AsyncClient, fake_slack: FakeSlack, oauth_settings: Settings) -> None:
    state = await start_install(web)
    grant = Grant(team_id=None, enterprise_id="E0ORG", is_enterprise_install=True)
    response = await finish(web, state, fake_slack.grant_code(grant))
    assert response.status_code == 200, response.text
    assert "Org E0ORG" in response.text
    assert (await stored(oauth_settings))["bots"] == [("E0ORG", None)]


async def test_success_url_redirects(redis_server: RedisProcess, fake_slack: FakeSlack,
                               tmp_path: Any) -> None:
    settings = multi_settings(redis_server.url, fake_slack.base_url,
                              f"sqlite:///{tmp_path / 's.db'}", token_key(),
                              slack_install_success_url="https://app.example/welcome")
    async with browser(settings) as web:
        response = await finish(web, await start_install(web), fake_slack.grant_code())
    assert response.status_code == 302
    assert response.headers["location"] == "https://app.example/welcome"


async def test_single_workspace_mode_has_no_install_routes(settings: Settings) -> None:
    async with browser(settings) as web:
        assert (await web.get("/slack/install")).status_code == 404
        assert (await web.get("/slack/oauth_redirect")).status_code == 404
