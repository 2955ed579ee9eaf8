"""Redaction of nested values and of URL passwords holding '@', and the BullMQ port's own
printed tracebacks turned into one structured, redacted log line (through the real
`configure_logging` in a child process, as a dyno runs it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from slackq import bullmq_seam
from slackq.logging import redact, redact_value
from tests.slack_requests import BOT_TOKEN

PASSWORD = "p@ss@w0rd"


@pytest.mark.parametrize(("text", "expected"), [
    (f"redis://user:{PASSWORD}@host:6379/0", "redis://user:***@host:6379/0"),
    (f"rediss://:{PASSWORD}@host:6380", "rediss://:***@host:6380"),
    (f"connect 'redis://u:{PASSWORD}@h/0' failed", "connect 'redis://u:***@h/0' failed"),
    (f"postgres://app:{PASSWORD}@db/x and redis://u:{PASSWORD}@h",
     "postgres://app:***@db/x and redis://u:***@h"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("mail alice@example.com", "mail alice@example.com"),
])
def test_url_passwords_are_hidden_whole_even_with_at_signs(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_nested_values_are_redacted_and_the_original_is_untouched() -> None:
    payload = {"event": {"type": "message", "token": "legacy-verification-token",
                         "blocks": [{"text": f"see {BOT_TOKEN}"},
                                    ("tuple", f"redis://u:{PASSWORD}@h")]},
               "bot_token": BOT_TOKEN, "ok": 1}
    before = json.dumps(payload, default=list)
    cleaned = redact_value(payload)
    text = json.dumps(cleaned, default=list)
    assert "legacy-verification-token" not in text and BOT_TOKEN not in text
    assert "ss@w0rd" not in text and "p@ss" not in text
    assert cleaned["ok"] == 1 and cleaned["event"]["type"] == "message"
    assert json.dumps(payload, default=list) == before  # the caller's data is not changed
    unchanged = {"a": [1, "two", {"b": None}]}
    assert redact_value(unchanged) is unchanged  # nothing to hide: nothing copied


def test_deep_nesting_is_bounded_and_still_redacted() -> None:
    deep: object = f"redis://u:{PASSWORD}@h"
    for _ in range(50):
        deep = [deep]
    assert PASSWORD not in str(redact_value(deep))


CHILD = """
import asyncio, sys, structlog
from slackq.logging import configure_logging
from bullmq import utils

configure_logging(sys.argv[1])
structlog.get_logger().info("nested", payload={"event": {"token": "legacy-verification-token",
    "items": [{"url": "redis://u:PASSWORD@h"}, "BOT"]}})

async def failing_job():
    raise RuntimeError("job Ev1 failed on redis://u:PASSWORD@h with BOT")

async def main():
    task = asyncio.ensure_future(failing_job())
    await asyncio.wait([task])
    errors = []
    # The port's own path for a job task that raised: it calls traceback.print_exc().
    assert utils.extract_result(task, lambda *args: errors.append(args)) is None
    assert len(errors) == 1

asyncio.run(main())
"""


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_the_ports_printed_traceback_is_one_redacted_log_line(log_format: str) -> None:
    code = CHILD.replace("PASSWORD", PASSWORD).replace("BOT", BOT_TOKEN)
    out = subprocess.run([sys.executable, "-W", "error", "-c", code, log_format],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    for secret in (PASSWORD, "ss@w0rd", BOT_TOKEN, "legacy-verification-token"):
        assert secret not in out.stderr, out.stderr
    assert out.stderr.count("Traceback (most recent call last)") == 1
    assert "bullmq_port_error" in out.stderr and "redis://u:***@h" in out.stderr
    if log_format == "json":
        lines = [json.loads(line) for line in out.stderr.splitlines()]
        assert [line["event"] for line in lines] == ["nested", "bullmq_port_error"]
        [port_line] = [line for line in lines if line["event"] == "bullmq_port_error"]
        assert port_line["level"] == "error"
        assert "RuntimeError: job Ev1 failed" in port_line["exception"]


def test_the_seam_names_every_port_module_that_prints_tracebacks() -> None:
    """If the port adds or drops a `traceback.print_exc()`, PRINTING_MODULES must follow."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("bullmq")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    printing = sorted(f"bullmq.{path.stem}" for path in package.glob("*.py")
                      if "print_exc(" in path.read_text() or "print(" in path.read_text())
    assert printing == sorted(bullmq_seam.PRINTING_MODULES), (
        "slackq.bullmq_seam.route_port_tracebacks would miss printed tracebacks: "
        f"the port prints in {printing}")
