"""The worker in multi-workspace mode (in-process, real Redis, real databases, Slack stand-in):
each job's token from its installation, uninstalls and revocations, token rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from bullmq import Queue
from pydantic import ValidationError

from harness.slack_standin import FakeSlack, Grant, slack_error
from slackq.contract import JobOptions
from slackq.embedded import RedisProcess
from slackq.models import parse_envelope
from slackq.settings import Settings
from tests.databases import db_url, pg_database, token_key  # noqa: F401 - fixtures
from tests.waiting import wait_until
from tests.worker_helpers import job_key, job_state, make_queue
from tests.workspace_support import (
    ACCEPT_SAVES,
    CLIENT_ID,
    CLIENT_SECRET,
    REFUSE_SAVES,
    install,
    lifecycle_event,
    mention,
    multi_settings,
    org_lifecycle_event,
    org_mention,
    raw_store,
    store_ddl,
)
from worker.errors import TransientError
from worker.handlers import default_registry
from worker.limiter import Limits
from worker.registry import HandlerRegistry, JobContext
from worker.runner import WorkerOptions, WorkerRuntime, start_worker
from worker.tokens import installation_key, open_workspace_tokens

JOBS = JobOptions.from_settings(Settings.model_construct())
TOKEN_A, TOKEN_B, TOKEN_ORG = ("xoxb-A-not-real", "xoxb-B-not-real", "xoxb-ORG-not-real")


@pytest.fixture
def multi(redis_server: RedisProcess, fake_slack: FakeSlack,
          db_url: str) -> Settings:  # noqa: F811 - fixture
    fake_slack.client_id, fake_slack.client_secret = CLIENT_ID, CLIENT_SECRET
    return multi_settings(redis_server.url, fake_slack.base_url, db_url, token_key(),
                          slack_token_refresh_seconds=60)


@pytest.fixture
async def aclient(multi: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(multi.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def queue(multi: Settings) -> AsyncIterator[Queue]:
    queue = make_queue(multi)
    yield queue
    await queue.close()


async def post_to_channel(ctx: JobContext) -> dict[str, Any]:
    """A command's or an interaction's handler: one message to the channel it came from."""
    data = ctx.data
    channel = data.get("channel_id") or (data.get("channel") or {}).get("id")
    return await ctx.slack.call("chat.postMessage", channel=channel, text="done")


def registry() -> HandlerRegistry:
    handlers = default_registry()
    handlers.register("command:/deploy")(post_to_channel)
    handlers.register("interactive:block_actions")(post_to_channel)
    return handlers


@pytest.fixture
async def worker(multi: Settings) -> AsyncIterator[Callable[[], Awaitable[WorkerRuntime]]]:
    runtimes: list[WorkerRuntime] = []

    async def _start() -> WorkerRuntime:
        options = replace(WorkerOptions.from_settings(multi), grace_seconds=3.0,
                          limits=Limits(per_channel=0, per_team=0))
        runtime = await start_worker(multi, registry(), options)
        runtimes.append(runtime)
        return runtime

    yield _start
    for runtime in runtimes:
        await runtime.stop()


async def add(queue: Queue, envelope: dict[str, Any]) -> str:
    name = envelope["event"]["type"]
    job = await queue.add(name, envelope, JOBS.for_job(envelope["event_id"]))
    return str(job.id)


async def ends(client: aioredis.Redis, settings: Settings, job_id: str, state: str) -> None:
    async def check() -> bool:
        return await job_state(client, settings, job_id) == state

    await wait_until(check, 20, f"job {job_id} {state}")


async def reason(client: aioredis.Redis, settings: Settings, job_id: str) -> str:
    return str(await client.hget(job_key(settings, job_id), "failedReason"))


async def test_each_workspace_is_answered_with_its_own_token(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    await install(multi, team="T0A", token=TOKEN_A)
    await install(multi, team="T0B", token=TOKEN_B)
    await install(multi, team=None, enterprise="E0ORG", token=TOKEN_ORG)
    await worker()
    ids = [await add(queue, mention("Ev0A1", "T0A", channel="C0A")),
           await add(queue, mention("Ev0B1", "T0B", channel="C0B")),
           await add(queue, org_mention("Ev0O1", "E0ORG", "T0INORG")),
           await add(queue, mention("Ev0A2", "T0A", channel="C0A", ts="1700000001.0001"))]
    for job_id in ids:
        await ends(aclient, multi, job_id, "completed")
    used = {(c.args["channel"], FakeSlack.token_of(c)) for c in
            fake_slack.calls_to("chat.postMessage")}
    assert used == {("C0A", TOKEN_A), ("C0B", TOKEN_B), ("C0CHAN001", TOKEN_ORG)}
    assert "token" not in {k for c in fake_slack.calls_to("chat.postMessage") for k in c.args}


async def test_commands_and_interactions_use_their_workspaces_token(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    await install(multi, team="T0B", token=TOKEN_B)
    await install(multi, team=None, enterprise="E0ORG", token=TOKEN_ORG)
    await worker()
    command = {"command": "/deploy", "team_id": "T0B", "channel_id": "C0CMD", "user_id": "U1",
               "trigger_id": "1.2.cmd", "is_enterprise_install": "false"}
    action = {"type": "block_actions", "team": {"id": "T0INORG", "enterprise_id": "E0ORG"},
              "enterprise": {"id": "E0ORG"}, "is_enterprise_install": True,
              "user": {"id": "U2", "team_id": "T0INORG"}, "channel": {"id": "C0ACT"},
              "trigger_id": "1.2.act"}
    jobs = [await queue.add("command:/deploy", command, JOBS.for_job("cmd-1.2.cmd")),
            await queue.add("interactive:block_actions", action, JOBS.for_job("int-1.2.act"))]
    for job in jobs:
        await ends(aclient, multi, str(job.id), "completed")
    used = {(c.args["channel"], FakeSlack.token_of(c))
            for c in fake_slack.calls_to("chat.postMessage")}
    assert used == {("C0CMD", TOKEN_B), ("C0ACT", TOKEN_ORG)}


async def test_no_installation_fails_permanently_without_calling_slack(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    await install(multi, team="T0A", token=TOKEN_A)
    await worker()
    job_id = await add(queue, mention("Ev0NONE1", "T0UNKNOWN"))
    await ends(aclient, multi, job_id, "failed")
    assert (await reason(aclient, multi, job_id)).startswith("no_installation")
    assert await aclient.hget(job_key(multi, job_id), "atm") == "1"  # never retried
    assert fake_slack.calls_to("chat.postMessage") == []


async def test_invalid_auth_stays_permanent(multi: Settings, worker: Any, queue: Queue,
                                            aclient: aioredis.Redis,
                                            fake_slack: FakeSlack) -> None:
    await install(multi, team="T0A", token=TOKEN_A)
    fake_slack.script("chat.postMessage", slack_error("token_revoked"))
    await worker()
    job_id = await add(queue, mention("Ev0REV1", "T0A"))
    await ends(aclient, multi, job_id, "failed")
    assert (await reason(aclient, multi, job_id)).startswith("token_revoked")


async def test_uninstall_stops_work_for_that_team_only(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    await install(multi, team="T0A", token=TOKEN_A)
    await install(multi, team="T0B", token=TOKEN_B)
    await worker()
    warm = await add(queue, mention("Ev0W1", "T0A"))  # puts T0A's token in the cache
    await ends(aclient, multi, warm, "completed")
    gone = await add(queue, lifecycle_event("Ev0UN1", "T0A", {"type": "app_uninstalled"}))
    await ends(aclient, multi, gone, "completed")
    after_a = await add(queue, mention("Ev0A9", "T0A", ts="1700000009.0001"))
    after_b = await add(queue, mention("Ev0B9", "T0B", ts="1700000009.0002"))
    await ends(aclient, multi, after_a, "failed")
    await ends(aclient, multi, after_b, "completed")
    assert (await reason(aclient, multi, after_a)).startswith("no_installation")
    assert fake_slack.tokens_used("chat.postMessage") == [TOKEN_A, TOKEN_B]


async def test_revoked_bot_token_stops_work_but_a_revoked_user_token_does_not(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis) -> None:
    await install(multi, team="T0A", token=TOKEN_A)
    await worker()
    users_only = {"type": "tokens_revoked", "tokens": {"oauth": ["U0INSTALLER"]}}
    await ends(aclient, multi, await add(queue, lifecycle_event("Ev0TR1", "T0A", users_only)),
               "completed")
    still = await add(queue, mention("Ev0A5", "T0A"))
    await ends(aclient, multi, still, "completed")
    bot = {"type": "tokens_revoked", "tokens": {"oauth": [], "bot": ["U0BOT"]}}
    await ends(aclient, multi, await add(queue, lifecycle_event("Ev0TR2", "T0A", bot)),
               "completed")
    after = await add(queue, mention("Ev0A6", "T0A", ts="1700000006.0001"))
    await ends(aclient, multi, after, "failed")
    assert (await reason(aclient, multi, after)).startswith("no_installation")


async def test_a_rotating_token_is_refreshed_once_ahead_of_expiry(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    # Expires in 30 s, within SLACK_TOKEN_REFRESH_SECONDS (60): due at once.
    refresh = fake_slack.grant_refresh_token(Grant(team_id="T0R"))
    await install(multi, team="T0R", token="xoxe.xoxb-1-old-not-real", refresh_token=refresh,
                  expires_in=30)
    await worker()
    ids = [await add(queue, mention(f"Ev0R{i:02}", "T0R", ts=f"17000000{i:02}.0001"))
           for i in range(10)]
    for job_id in ids:
        await ends(aclient, multi, job_id, "completed")
    [call] = fake_slack.calls_to("oauth.v2.access")
    assert call.args == {"grant_type": "refresh_token", "refresh_token": refresh}
    [new] = fake_slack.issued_tokens
    assert set(fake_slack.tokens_used("chat.postMessage")) == {new}
    assert fake_slack.reused_refresh_tokens == []
    stored = await raw_store(multi)  # the rotator's save went through the encrypting column
    assert "T0R" in stored
    for secret in (new, refresh, "xoxe", "xoxb"):
        assert secret not in stored


@pytest.mark.parametrize(("envelope", "key"), [
    ({"type": "event_callback", "event_id": "Ev1", "team_id": "T1", "event": {"type": "x"},
      "authorizations": [{"team_id": "T2", "enterprise_id": "E1"}]}, ("E1", "T2")),
    ({"type": "event_callback", "event_id": "Ev1", "team_id": "T1", "event": {"type": "x"}},
     (None, "T1")),
    # A channel shared with another org: the top-level enterprise is the other org's.
    ({"type": "event_callback", "event_id": "Ev1", "team_id": "T1", "enterprise_id": "E9",
      "event": {"type": "x"}, "authorizations": [{"team_id": "T2", "enterprise_id": None}]},
     (None, "T2")),
    # Org-wide: by the authorization, whatever workspace the event came from.
    ({"type": "event_callback", "event_id": "Ev1", "team_id": "T1", "enterprise_id": "E1",
      "event": {"type": "x"}, "authorizations": [
          {"team_id": None, "enterprise_id": "E1", "is_enterprise_install": True}]},
     ("E1", None)),
    # An org-wide app's app_uninstalled names the org only, with or without authorizations.
    ({"type": "event_callback", "event_id": "Ev1", "enterprise_id": "E1",
      "event": {"type": "app_uninstalled"}, "authorizations": [
          {"team_id": None, "enterprise_id": "E1", "is_enterprise_install": True}]},
     ("E1", None)),
    ({"type": "event_callback", "event_id": "Ev1", "enterprise_id": "E1",
      "event": {"type": "app_uninstalled"}}, ("E1", None)),
    ({"type": "event_callback", "event_id": "Ev1", "team_id": "T1", "enterprise_id": "E1",
      "event": {"type": "app_uninstalled"}}, ("E1", "T1")),
    ({"command": "/x", "team_id": "T1", "channel_id": "C", "user_id": "U",
      "enterprise_id": "E1", "is_enterprise_install": "true"}, ("E1", None)),
    ({"command": "/x", "team_id": "T1", "channel_id": "C", "user_id": "U",
      "is_enterprise_install": "false"}, (None, "T1")),
    ({"type": "block_actions", "team": {"id": "T1", "enterprise_id": "E1"},
      "user": {"id": "U"}, "is_enterprise_install": False}, ("E1", "T1")),
    ({"type": "view_submission", "team": None, "user": {"id": "U", "team_id": "T3"},
      "enterprise": {"id": "E2"}, "is_enterprise_install": True,
      "view": {"app_installed_team_id": "T4"}}, ("E2", None)),
    ({"type": "block_actions", "team": None, "user": {"id": "U", "team_id": "T3"},
      "enterprise": "E3", "is_enterprise_install": True}, ("E3", None)),
    ({"type": "view_submission", "team": {"id": "T1"}, "user": {"id": "U"},
      "view": {"app_installed_team_id": "T4"}}, (None, "T4")),
])
def test_installation_key_of_events_commands_and_interactions(
        envelope: dict[str, Any], key: tuple[str | None, str | None]) -> None:
    try:
        parsed = parse_envelope(envelope)
    except ValidationError as exc:  # pragma: no cover - a malformed case is a test bug
        raise AssertionError(exc) from exc
    assert installation_key(parsed) == key


def test_an_event_callback_names_a_team_or_an_enterprise() -> None:
    envelope = org_lifecycle_event("Ev1", "E1", {"type": "app_uninstalled"}, authorized=False)
    assert parse_envelope(envelope).model_dump(exclude_unset=True) == envelope  # data unchanged
    with pytest.raises(ValidationError, match="needs team_id or enterprise_id"):
        parse_envelope({**envelope, "enterprise_id": None})
    with pytest.raises(ValidationError, match="needs team_id or enterprise_id"):
        parse_envelope({**envelope, "enterprise_id": ""})


async def test_an_org_wide_uninstall_naming_the_org_only_removes_the_org_install_only(
        multi: Settings, worker: Any, queue: Queue, aclient: aioredis.Redis,
        fake_slack: FakeSlack) -> None:
    await install(multi, team=None, enterprise="E0ORG", token=TOKEN_ORG)
    await install(multi, team="T0A", enterprise="E0ORG", token=TOKEN_A)  # same org, one workspace
    await worker()
    warm = await add(queue, org_mention("Ev0OW1", "E0ORG", "T0INORG"))  # cached
    await ends(aclient, multi, warm, "completed")
    gone = await add(queue, org_lifecycle_event("Ev0OU1", "E0ORG", {"type": "app_uninstalled"}))
    await ends(aclient, multi, gone, "completed")
    after_org = await add(queue, org_mention("Ev0OW2", "E0ORG", "T0INORG"))
    workspace = mention("Ev0AW2", "T0A", ts="1700000009.0002")
    workspace["enterprise_id"] = workspace["authorizations"][0]["enterprise_id"] = "E0ORG"
    after_workspace = await add(queue, workspace)
    await ends(aclient, multi, after_org, "failed")
    await ends(aclient, multi, after_workspace, "completed")
    assert (await reason(aclient, multi, after_org)).startswith("no_installation")
    assert fake_slack.tokens_used("chat.postMessage") == [TOKEN_ORG, TOKEN_A]


async def test_a_refresh_the_store_refuses_is_held_and_its_refresh_token_never_sent_again(
        multi: Settings, aclient: aioredis.Redis, fake_slack: FakeSlack,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.tokens.SAVE_RETRY_SECONDS", 0.0)
    refresh = fake_slack.grant_refresh_token(Grant(team_id="T0R"))
    await install(multi, team="T0R", token="xoxe.xoxb-1-old-not-real", refresh_token=refresh,
                  expires_in=30)  # due at once
    backend = "sqlite" if multi.database().startswith("sqlite") else "postgresql"
    await store_ddl(multi, REFUSE_SAVES[backend])
    first = await open_workspace_tokens(multi, aclient)  # two worker processes' stores
    second = await open_workspace_tokens(multi, aclient)
    envelope = parse_envelope(mention("Ev0H1", "T0R"))
    try:
        new = await first.token_for(envelope)  # Slack rotated it; the store refused the save
        assert new == fake_slack.issued_tokens[0]
        with pytest.raises(TransientError, match="holds the refreshed token"):
            await second.token_for(envelope)  # it must not send the spent refresh token
        assert await first.token_for(envelope) == new  # held: its jobs go on
        await store_ddl(multi, ACCEPT_SAVES[backend])
        assert await first.token_for(envelope) == new  # saved now
        assert await second.token_for(envelope) == new  # read from the store
    finally:
        await first.close()
        await second.close()
    assert len(fake_slack.calls_to("oauth.v2.access")) == 1
    assert fake_slack.reused_refresh_tokens == []
    assert new not in await raw_store(multi)
