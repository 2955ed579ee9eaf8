"""Secrets never reach logs or error messages: the logs of a full run of the real processes, at
debug level, with failures, retries, rejections and refused start-ups, are searched for them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.slack_standin import FakeSlack, rate_limited, slack_error
from slackq.embedded import RedisProcess
from tests.security_support import procfile_stack, run_cli, start_fails
from tests.slack_requests import (
    BOT_TOKEN,
    SIGNING_SECRET,
    app_mention_envelope,
    encode,
    signed_headers,
)

REDIS_PASSWORD = "redis-pw-5d1e0b7c9a"
MESSAGE_TEXT = "<@U0BOT> the private body text 0xBEEF"
SECRETS = {
    "redis password": REDIS_PASSWORD,
    "bot token": BOT_TOKEN,
    "bot token tail": BOT_TOKEN.split("-", 2)[2],
    "signing secret": SIGNING_SECRET,
    "legacy verification token": "legacy-verification-token",
    "message body": "private body text",
}


def assert_no_secret(output: str, where: str) -> None:
    assert output.strip(), f"{where}: nothing captured, the search would prove nothing"
    for name, value in SECRETS.items():
        assert value not in output, f"{name} leaked in {where}:\n{output[-3000:]}"


def test_no_secret_in_the_logs_of_a_full_run(fake_slack: FakeSlack, tmp_path: Path) -> None:
    (tmp_path / "refused").mkdir()
    server = RedisProcess(data_dir=tmp_path / "redis", overrides={"requirepass": REDIS_PASSWORD})
    server.start()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    try:
        # Replies: an auth error (the kind whose message echoes request details), a 429, then
        # success: a failed job, a rate-limited attempt and its retry (>= 3 calls whatever the
        # retry policy does with invalid_auth).
        fake_slack.script("chat.postMessage", slack_error("invalid_auth"), rate_limited(1))
        with procfile_stack(url, fake_slack, tmp_path, LOG_LEVEL="debug") as (base, web, worker):
            def post(payload: dict[str, object], **headers: str) -> int:
                body = encode(payload)
                return httpx.post(f"{base}/slack/events", content=body,
                                  headers={**signed_headers(body), **headers}, timeout=5
                                  ).status_code

            assert post(app_mention_envelope("Ev0SEC0001", text=MESSAGE_TEXT)) == 200
            assert post(app_mention_envelope("Ev0SEC0002", text=MESSAGE_TEXT)) == 200
            assert post(app_mention_envelope("Ev0SEC0003", text=MESSAGE_TEXT),
                        **{"X-Slack-Signature": "v0=" + "0" * 64}) == 401
            fake_slack.wait_for_calls("chat.postMessage", 3, timeout=40)
            cli = {command: run_cli(url, command) for command in ("status", "doctor", "failed")}
        logs = {"web": web.output(), "worker": worker.output()}
        # The run really logged what it should have: the search covers real events.
        assert "job_stored" in logs["web"] and "slack_request_rejected" in logs["web"]
        assert "job_failed" in logs["worker"] and "invalid_auth" in logs["worker"]
        # At LOG_LEVEL=debug the worker logs its own debug lines; slack-sdk's (request headers,
        # Slack's whole answer) never: its client has a logger held above DEBUG (worker/slack.py;
        # test_worker_outcomes.py). The token's paths here are Slack's error answers, the client's
        # exceptions and the job's failure, all searched below.
        assert '"level": "debug"' in logs["worker"]
        assert "Authorization" not in logs["worker"]
        for name, output in logs.items():
            assert_no_secret(output, f"{name} log")
        for command, (_code, output) in cli.items():
            assert_no_secret(output, f"slackq {command}")
        for process in ("web", "worker"):
            wrong = url.replace(REDIS_PASSWORD, REDIS_PASSWORD[::-1])
            code, output = start_fails(process, wrong, tmp_path / "refused")
            assert code == 2
            assert_no_secret(output.replace(REDIS_PASSWORD[::-1], ""), f"{process} start-up")
            assert REDIS_PASSWORD[::-1] not in output
    finally:
        server.kill()
    assert_no_secret((server.data_dir / "server.log").read_text(), "redis-server log")


LOG_EXCEPTIONS = """
import logging, sys
import structlog
from slackq.logging import configure_logging
configure_logging(sys.argv[1], "info")
url = "redis://u:{pw}@127.0.0.1:6379/0"
try:
    raise RuntimeError(f"connecting to {{url}} with {bot}")
except RuntimeError:
    structlog.get_logger().exception("structlog_traceback")
try:
    raise RuntimeError(f"connecting to {{url}} with {bot}")
except RuntimeError:
    logging.getLogger("redis").exception("stdlib_traceback")
structlog.get_logger().info("query_password", url="rediss://h:6380/0?password={pw}&db=0")
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_tracebacks_and_url_query_passwords_are_redacted(log_format: str) -> None:
    """An exception's message can hold a Redis URL or a token: its traceback is redacted too."""
    code = LOG_EXCEPTIONS.format(pw=REDIS_PASSWORD, bot=BOT_TOKEN)
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, log_format],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    for event in ("structlog_traceback", "stdlib_traceback", "query_password"):
        assert event in out.stderr
    assert out.stderr.count("Traceback (most recent call last)") == 2  # rendered, not a repr
    assert "password=***" in out.stderr and "u:***@" in out.stderr
    assert_no_secret(out.stderr, f"{log_format} log lines with tracebacks")
