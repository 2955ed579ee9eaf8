"""`python -m slackq.sample_event`: one signed event all the way round, through real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from harness.slack_standin import FakeSlack
from slackq.embedded import RedisProcess, free_port
from tests.module_stack import ModuleStack, stack_fixtures
from tests.processes import process_env
from tests.slack_requests import BOT_TOKEN, SIGNING_SECRET

shared, redis_server, fake_slack = stack_fixtures("sample")


@pytest.fixture
def events_url(redis_server: RedisProcess, shared: ModuleStack) -> str:
    return f"{shared.base}/slack/events"


SLACKQ = str(Path(sys.executable).parent / "slackq")


def sample_event(
    *args: str, secret: str | None = SIGNING_SECRET, cli: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m slackq.sample_event`, or with `cli` the console script's `slackq sample-event`.
    """
    env = process_env(**({"SLACK_SIGNING_SECRET": secret} if secret is not None else {}))
    command = [SLACKQ, "sample-event"] if cli else [sys.executable, "-m", "slackq.sample_event"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=30)


def test_a_sample_event_gets_one_threaded_reply(
    events_url: str, fake_slack: FakeSlack, redis_client: redis.Redis
) -> None:
    result = sample_event("--url", events_url, "--text", "<@U0SLACKQBOT> round trip")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-> 200" in result.stdout
    event_id = result.stdout.split("event_id=")[1].split()[0]
    assert redis_client.exists(f"bull:slack-events:{event_id}") == 1

    [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
    assert call.args["channel"] == "C0SAMPLE01"
    assert call.args["text"] == "<@U0SAMPLE01> got it!"
    assert call.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert SIGNING_SECRET not in result.stdout + result.stderr


def test_each_run_is_a_new_event(events_url: str, fake_slack: FakeSlack) -> None:
    for _ in range(2):
        assert sample_event("--url", events_url).returncode == 0
    calls = fake_slack.wait_for_calls("chat.postMessage", 2)
    assert len({call.args["thread_ts"] for call in calls}) == 2


def test_a_wrong_secret_is_refused_and_stores_nothing(
    events_url: str, redis_client: redis.Redis
) -> None:
    result = sample_event("--url", events_url, secret="not-the-signing-secret")
    assert result.returncode == 1
    assert "-> 401" in result.stdout and "invalid_signature" in result.stdout
    assert "not-the-signing-secret" not in result.stdout + result.stderr
    assert not redis_client.keys("bull:slack-events:EvSAMPLE*")


def test_without_a_secret_it_names_the_variable() -> None:
    result = sample_event(secret=None)
    assert result.returncode == 2
    assert result.stdout == "" and "SLACK_SIGNING_SECRET" in result.stderr


def test_nothing_listening_is_exit_2_and_credentials_are_not_shown() -> None:
    port = free_port()
    url = f"http://user:pa55word@127.0.0.1:{port}/slack/events?token=xoxb-in-query"
    result = sample_event("--url", url)
    assert result.returncode == 2
    assert f"no answer from http://127.0.0.1:{port}/slack/events:" in result.stderr
    assert "pa55word" not in result.stderr and "xoxb-in-query" not in result.stderr


def test_the_slackq_command_posts_it_too(events_url: str, fake_slack: FakeSlack,
                                         redis_client: redis.Redis) -> None:
    result = sample_event("--url", events_url, "--channel", "C0CLI0001", cli=True)
    assert result.returncode == 0, result.stdout + result.stderr
    event_id = result.stdout.split("event_id=")[1].split()[0]
    assert redis_client.exists(f"bull:slack-events:{event_id}") == 1
    [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
    assert call.args["channel"] == "C0CLI0001"

    assert sample_event(secret=None, cli=True).returncode == 2
    assert "--url" in sample_event("--help", cli=True).stdout
