"""Many workspaces end to end, through the Procfile's real processes: installs through the HTTP
flow, events from each workspace answered with its own token, an org-wide install, an uninstall
that stops one team only, and no token in any log line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis

from harness.slack_standin import FakeSlack, Grant
from slackq.embedded import RedisProcess, free_port
from tests.databases import db_url, pg_database, token_key  # noqa: F401 - fixtures
from tests.processes import Proc, process_env, wait_http_ok
from tests.slack_requests import SIGNING_SECRET, encode, signed_headers
from tests.waiting import wait_until_sync
from tests.workspace_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    lifecycle_event,
    mention,
    multi_env,
    org_lifecycle_event,
    org_mention,
)

pytestmark = pytest.mark.slow


class Stack:
    def __init__(self, base: str, web: Proc, worker: Proc, key: str) -> None:
        self.base, self.web, self.worker, self.key = base, web, worker, key

    def install(self, fake: FakeSlack, grant: Grant) -> httpx.Response:
        """A person installing the app: /slack/install, Slack's approval page (the stand-in's,
        which approves `grant`), the redirect back, each hop followed as a browser would."""
        fake.pending_grants.append(grant)
        started = httpx.get(f"{self.base}/slack/install", timeout=10)
        assert started.status_code == 302
        # The cookie is `Secure`; a browser sends it to http://localhost, httpx does not.
        cookie = started.headers["set-cookie"].split(";", 1)[0]
        approved = httpx.get(started.headers["location"], timeout=10)
        assert approved.status_code == 302
        back = approved.headers["location"]
        assert back.startswith(f"{self.base}/slack/oauth_redirect?")
        assert parse_qs(urlsplit(back).query)["state"] == [cookie.split("=", 1)[1]]
        return httpx.get(back, headers={"cookie": cookie}, timeout=10)

    def post_event(self, payload: dict[str, Any], status: int = 200) -> httpx.Response:
        body = encode(payload)
        response = httpx.post(f"{self.base}/slack/events", content=body,
                              headers=signed_headers(body), timeout=10)
        assert response.status_code == status, response.text
        return response

    def logs(self) -> str:
        return self.web.output() + self.worker.output()


@pytest.fixture
def stack(redis_server: RedisProcess, fake_slack: FakeSlack, tmp_path: Path,
          db_url: str) -> Iterator[Stack]:  # noqa: F811 - fixture
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    port, key = free_port(), token_key()
    env = process_env(REDIS_URL=redis_server.url, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                      SLACK_API_URL=fake_slack.base_url, PORT=str(port),
                      SLACK_AUTHORIZE_URL=fake_slack.authorize_url,
                      SLACK_REDIRECT_URI=f"http://127.0.0.1:{port}/slack/oauth_redirect",
                      WORKER_RATE_PER_CHANNEL="0", WORKER_RATE_PER_TEAM="0",
                      LOG_LEVEL="debug", **multi_env(db_url, key))
    web = Proc("web", env, tmp_path)
    worker = Proc("worker", env, tmp_path)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc=web)
        worker.wait_for_output("worker_started")
        yield Stack(f"http://127.0.0.1:{port}", web, worker, key)
    finally:
        worker.stop()
        web.stop()


def failed_reason(client: redis.Redis, job_id: str) -> str:
    return str(client.hget(f"bull:slack-events:{job_id}", "failedReason"))


def test_many_workspaces_through_the_install_flow(
        stack: Stack, fake_slack: FakeSlack, redis_client: redis.Redis) -> None:
    for grant in (Grant(team_id="T0ALPHA"), Grant(team_id="T0BETA", expires_in=43_200),
                  Grant(team_id=None, enterprise_id="E0GRID", is_enterprise_install=True)):
        installed = stack.install(fake_slack, grant)
        assert installed.status_code == 200, installed.text
    alpha, beta, grid = fake_slack.issued_tokens

    stack.post_event(mention("Ev0E2EA1", "T0ALPHA", channel="C0ALPHA"))
    stack.post_event(mention("Ev0E2EB1", "T0BETA", channel="C0BETA"))
    stack.post_event(org_mention("Ev0E2EG1", "E0GRID", "T0INGRID"))
    calls = fake_slack.wait_for_calls("chat.postMessage", 3)
    assert {(c.args["channel"], fake_slack.token_of(c)) for c in calls} == {
        ("C0ALPHA", alpha), ("C0BETA", beta), ("C0CHAN001", grid)}

    stack.post_event(lifecycle_event("Ev0E2EU1", "T0ALPHA", {"type": "app_uninstalled"}))
    stack.worker.wait_for_output('"slack_app_uninstalled"')
    stack.post_event(mention("Ev0E2EA2", "T0ALPHA", channel="C0ALPHA", ts="1700000002.0001"))
    stack.post_event(mention("Ev0E2EB2", "T0BETA", channel="C0BETA", ts="1700000002.0002"))
    wait_until_sync(lambda: redis_client.zscore("bull:slack-events:failed", "Ev0E2EA2")
                    is not None, 20, "the uninstalled team's job failed")
    assert failed_reason(redis_client, "Ev0E2EA2").startswith("no_installation")
    calls = fake_slack.wait_for_calls("chat.postMessage", 4)
    assert [(c.args["channel"], fake_slack.token_of(c)) for c in calls[3:]] == [
        ("C0BETA", beta)]

    # The org-wide uninstall names the org only (no team_id): stored, and the org's
    # installation goes; the other workspaces stay.
    nobody = {k: v for k, v in org_lifecycle_event("Ev0E2EX1", "E0GRID", {}).items()
              if k != "enterprise_id"}
    refused = stack.post_event({**nobody, "event": {"type": "app_uninstalled"}}, 400)
    assert refused.json()["detail"] == "event_callback without team_id or enterprise_id"
    stack.post_event(org_lifecycle_event("Ev0E2EU2", "E0GRID", {"type": "app_uninstalled"}))
    wait_until_sync(lambda: redis_client.zscore("bull:slack-events:completed", "Ev0E2EU2")
                    is not None, 20, "the org-wide uninstall completed")
    stack.post_event(org_mention("Ev0E2EG2", "E0GRID", "T0INGRID"))
    stack.post_event(mention("Ev0E2EB3", "T0BETA", channel="C0BETA", ts="1700000003.0002"))
    wait_until_sync(lambda: redis_client.zscore("bull:slack-events:failed", "Ev0E2EG2")
                    is not None, 20, "the uninstalled org's job failed")
    assert failed_reason(redis_client, "Ev0E2EG2").startswith("no_installation")
    calls = fake_slack.wait_for_calls("chat.postMessage", 5)
    assert [(c.args["channel"], fake_slack.token_of(c)) for c in calls[4:]] == [
        ("C0BETA", beta)]
    assert json.loads(str(redis_client.hget("bull:slack-events:Ev0E2EU2", "returnvalue"))) == {
        "uninstalled": {"enterprise_id": "E0GRID", "team_id": None}}

    logs = stack.logs()
    assert '"slack_app_installed"' in logs and '"job_completed"' in logs
    exchanged = [c.args.get("code") or c.args.get("refresh_token")
                 for c in fake_slack.calls_to("oauth.v2.access")]
    for secret in (*fake_slack.issued_tokens, *exchanged, CLIENT_SECRET, stack.key):
        assert secret not in logs
    assert "xoxb-" not in logs and "xoxe" not in logs and "gAAAAA" not in logs  # nor encrypted
