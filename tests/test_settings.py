"""Settings: read from the environment once; a missing or bad variable is named in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from producers.enqueue import EnqueuePolicy
from slackq.errors import ConfigError
from slackq.settings import Settings, load_settings
from tests.processes import process_env


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "PORT", "QUEUE_NAME", "QUEUE_PREFIX", "WORKER_CONCURRENCY",
                 "LOG_FORMAT", "LOG_LEVEL", "SLACK_API_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.slack_api_url == "https://slack.com/api/"
    assert (settings.port, settings.queue_name, settings.queue_prefix) == (
        3000, "slack-events", "bull")
    # LOG_FORMAT unset is "auto": slackq.logging picks console on a terminal, JSON otherwise.
    assert (settings.worker_concurrency, settings.log_format, settings.log_level) == (
        10, None, "info")


def test_missing_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_SIGNING_SECRET", raising=False)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        load_settings(require=("SLACK_SIGNING_SECRET",))


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "eighty"), ("REDIS_URL", "http://localhost"), ("WORKER_CONCURRENCY", "0"),
     ("LOG_FORMAT", "xml"), ("QUEUE_NAME", "a:b")],
)
def test_malformed_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


@pytest.mark.parametrize(("module", "variable"), [("producers", "SLACK_SIGNING_SECRET"),
                                                   ("worker", "SLACK_BOT_TOKEN")])
def test_entry_point_stops_with_one_line(module: str, variable: str) -> None:
    result = subprocess.run([sys.executable, "-m", module], env=process_env(),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert variable in result.stderr


def test_an_attempt_timeout_that_leaves_no_retry_names_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WEBHOOK_ENQUEUE_BUDGET_SECONDS", "1")
    monkeypatch.setenv("WEBHOOK_REDIS_TIMEOUT_SECONDS", "1")
    with pytest.raises(ConfigError, match=r"WEBHOOK_REDIS_TIMEOUT_SECONDS.*WEBHOOK_ENQUEUE_BUDGET"):
        load_settings()


def test_the_webhook_policy_comes_from_the_settings() -> None:
    settings = Settings(webhook_enqueue_budget_seconds=1.5, webhook_redis_timeout_seconds=0.2,
                        webhook_retry_backoff_seconds=0.01, webhook_retry_backoff_max_seconds=0.1)
    assert EnqueuePolicy.from_settings(settings) == EnqueuePolicy(1.5, 0.2, 0.01, 0.1)
