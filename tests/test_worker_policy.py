"""Retry policy, Slack error conversion, envelope models, worker options: pure, no servers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from slackq.contract import job_options
from slackq.models import (
    AppMentionEvent,
    EventCallback,
    InteractionPayload,
    OtherEvent,
    SlashCommand,
    parse_envelope,
    team_of,
)
from slackq.retry_policy import Backoff, backoff_delay_ms, will_retry
from slackq.settings import Settings, load_settings
from tests.slack_requests import app_mention_envelope
from worker.errors import SlackPermanentError, SlackRateLimited, SlackTransientError
from worker.limiter import Limits
from worker.retry import defer_delay_ms, is_permanent_slack_error, retry_after_seconds
from worker.runner import WorkerOptions
from worker.slack import convert_api_error


def node_exponential(delay: int, jitter: float, attempts_made: int, rand: float) -> int:
    """Node BullMQ 6.7.0's builtin `exponential` (tests/node/node_modules/bullmq backoffs.js)."""
    import math

    if jitter > 0:
        max_delay = round(math.pow(2, attempts_made - 1) * delay)
        min_delay = max_delay * (1 - jitter)
        return math.floor(rand * max_delay * jitter + min_delay)
    return round(math.pow(2, attempts_made - 1) * delay)


@given(
    delay=st.integers(min_value=0, max_value=60_000),
    jitter=st.floats(min_value=0, max_value=1),
    attempts_made=st.integers(min_value=1, max_value=12),
    rand=st.floats(min_value=0, max_value=0.999999),
)
def test_exponential_backoff_is_nodes_formula(
    delay: int, jitter: float, attempts_made: int, rand: float
) -> None:
    backoff = Backoff("exponential", delay, jitter)
    got = backoff_delay_ms(backoff, attempts_made, rand)
    assert got == node_exponential(delay, jitter, attempts_made, rand)
    top = 2 ** (attempts_made - 1) * delay
    assert top * (1 - jitter) - 1 <= got <= top


def test_jitter_spreads_retries_and_zero_jitter_does_not() -> None:
    jittered = Backoff("exponential", 1000, 0.5)
    assert backoff_delay_ms(jittered, 3, 0.0) == 2000
    assert backoff_delay_ms(jittered, 3, 0.999) == 3998
    plain = Backoff("exponential", 1000)
    assert {backoff_delay_ms(plain, 3, r) for r in (0.0, 0.5, 0.99)} == {4000}
    assert backoff_delay_ms(Backoff("fixed", 700), 5, 0.3) == 700


def test_backoff_reads_the_jobs_own_options() -> None:
    opts = job_options("Ev0POLICY1", Settings.model_construct())
    backoff = Backoff.from_opts(opts["backoff"])
    assert backoff is not None and backoff.type == "exponential" and backoff.jitter > 0
    assert Backoff.from_opts(250) == Backoff("fixed", 250)
    assert Backoff.from_opts(None) is None
    assert Backoff.from_opts({"type": "custom-node-strategy", "delay": 5}) is None
    clamped = Backoff.from_opts({"type": "fixed", "delay": 10, "jitter": 7})
    assert clamped == Backoff("fixed", 10, 1.0)
    assert Backoff("exponential", 1000, 0.5).to_opts() == {
        "type": "exponential", "delay": 1000, "jitter": 0.5}


def test_attempt_counting_matches_bullmq() -> None:
    # attempts=3: failures after attempt 1 and 2 retry, after attempt 3 the job fails.
    assert [will_retry(made, 3) for made in range(3)] == [True, True, False]


def test_deferral_never_shortens_retry_after() -> None:
    assert defer_delay_ms(2, 0.0) == 2000
    assert 2000 <= defer_delay_ms(2, 0.99) <= 2400
    assert defer_delay_ms(-1, 0.5) == 0
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds(None) == 1
    assert retry_after_seconds("soon") == 1
    assert retry_after_seconds("-4") == 1


def api_error(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> SlackApiError:
    response = AsyncSlackResponse(
        client=None, http_verb="POST", api_url="http://127.0.0.1/api/chat.postMessage",
        req_args={}, data=body, headers=headers or {}, status_code=status,
    )
    return SlackApiError("failed", response)


@pytest.mark.parametrize(
    "code", ["channel_not_found", "not_in_channel", "invalid_auth", "account_inactive"])
def test_permanent_slack_codes_never_retry(code: str) -> None:
    assert is_permanent_slack_error(code)
    error = convert_api_error(api_error(200, {"ok": False, "error": code}), "chat.postMessage")
    assert isinstance(error, SlackPermanentError)
    assert code in str(error)


def test_429_becomes_a_deferral_of_retry_after() -> None:
    error = convert_api_error(
        api_error(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}),
        "chat.postMessage")
    assert isinstance(error, SlackRateLimited)
    assert error.delay_seconds == 7


@pytest.mark.parametrize(("status", "body"), [
    (500, {"ok": False, "error": "fatal_error"}),
    (503, {"ok": False}),
    (200, {"ok": False, "error": "internal_error"}),
    (200, {"ok": False, "error": "some_code_slack_adds_next_year"}),
])
def test_5xx_and_unknown_codes_are_transient(status: int, body: dict[str, Any]) -> None:
    error = convert_api_error(api_error(status, body), "chat.postMessage")
    assert isinstance(error, SlackTransientError)


def test_event_callback_model_accepts_slack_envelopes_and_keeps_extra_fields() -> None:
    data = app_mention_envelope("Ev0MODEL01", thread_ts="1700000000.000001")
    data["brand_new_field"] = {"x": 1}
    envelope = parse_envelope(data)
    assert isinstance(envelope, EventCallback)
    assert isinstance(envelope.event, AppMentionEvent)
    assert envelope.event.thread_ts == "1700000000.000001"
    assert team_of(envelope) == "T0TEAM001"
    assert json.loads(envelope.model_dump_json())["brand_new_field"] == {"x": 1}

    data["event"] = {"type": "reaction_added", "reaction": "eyes"}
    assert isinstance(parse_envelope(data).event, OtherEvent)  # type: ignore[union-attr]


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("event_id"),
    lambda d: d["event"].pop("channel"),
    lambda d: d["event"].update(ts=None),
    lambda d: d.update(event="not an object"),
])
def test_broken_event_callbacks_are_rejected(breakage: Any) -> None:
    data = app_mention_envelope("Ev0MODEL02")
    breakage(data)
    with pytest.raises(ValidationError):
        parse_envelope(data)


def test_slash_command_and_interactivity_models() -> None:
    command = parse_envelope({
        "command": "/deploy", "text": "api", "team_id": "T1", "channel_id": "C1", "user_id": "U1",
        "response_url": "https://hooks.slack.com/commands/T1/1/x", "trigger_id": "1.2.3",
    })
    assert isinstance(command, SlashCommand) and team_of(command) == "T1"
    action = parse_envelope({
        "type": "block_actions", "team": {"id": "T2", "domain": "acme"}, "user": {"id": "U2"},
        "actions": [{"action_id": "approve"}], "trigger_id": "4.5.6",
    })
    assert isinstance(action, InteractionPayload) and team_of(action) == "T2"
    with pytest.raises(ValidationError):
        parse_envelope({"command": "deploy", "team_id": "T1", "channel_id": "C1", "user_id": "U1"})
    with pytest.raises(TypeError):
        parse_envelope(["not", "an", "object"])


def test_models_produce_json_schema() -> None:
    for model in (EventCallback, SlashCommand, InteractionPayload):
        schema = model.model_json_schema()
        assert schema["type"] == "object" and schema["required"]


def test_worker_options_and_limits_come_from_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"WORKER_GRACE_SECONDS": "40", "WORKER_LOCK_DURATION_MS": "30000",
                        "WORKER_STALLED_INTERVAL_MS": "7000", "WORKER_RUN_RETRY_DELAY_MS": "500",
                        "WORKER_MAX_STALLED_COUNT": "3", "SLACKQ_ALLOW_EVICTION": "1",
                        "WORKER_RATE_PER_CHANNEL": "2", "WORKER_RATE_PER_TEAM": "0"}.items():
        monkeypatch.setenv(name, value)
    assert WorkerOptions.from_settings(load_settings()) == WorkerOptions(
        grace_seconds=40.0, lock_duration_ms=30_000, stalled_interval_ms=7_000,
        run_retry_delay_ms=500, max_stalled_count=3, allow_eviction=True,
        limits=Limits(per_channel=2.0, per_team=0.0))
    defaults = WorkerOptions.from_settings(Settings.model_construct())
    assert (defaults.grace_seconds, defaults.lock_duration_ms, defaults.max_stalled_count,
            defaults.limits) == (25.0, 20_000, 1, Limits(1.0, 10.0))
