"""A whole deployment for the dashboard's browser tests: redis-server, the web app (webhook and
dashboard) served by uvicorn, a real worker process, the Slack stand-in, and Debian's Chromium.

Everything here is synchronous: while `sync_playwright()` is open no asyncio loop may run in the
test's thread (the web app runs its own loop in a server thread).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from harness.slack_standin import FakeSlack
from producers.app import create_app
from slackq.settings import Settings
from tests.processes import Proc, process_env
from tests.slack_requests import BOT_TOKEN, encode, signed_headers

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def chromium_path() -> str:
    """Debian's Chromium; skipped where it is missing, except under CI where it must be there
    (`python3 dev.py test` installs it)."""
    found = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if found:
        return found
    reason = "chromium not installed (apt-get install chromium; `python3 dev.py test` does)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The web process's app on a free loopback port, in a thread with its own event loop."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning",
                            lifespan="on", ws="none", access_log=False, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the web app did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def worker_process(settings: Settings, log_dir: Path) -> Iterator[Proc]:
    """`python -m worker` (the Procfile's worker line) against `settings`' Redis and Slack."""
    env = process_env(REDIS_URL=settings.redis_url, SLACK_BOT_TOKEN=BOT_TOKEN,
                      SLACK_API_URL=settings.slack_api_url, WORKER_RATE_PER_CHANNEL="0")
    proc = Proc("worker", env, log_dir)
    try:
        proc.wait_for_output("worker_started", timeout=30)
        yield proc
    finally:
        proc.stop()


def post_event(base_url: str, envelope: dict[str, Any]) -> None:
    """POST a signed Events API request to the running web app, as Slack does."""
    body = encode(envelope)
    response = httpx.post(f"{base_url}/slack/events", content=body,
                          headers=signed_headers(body), timeout=10)
    assert response.status_code == 200, response.text


def fake_slack() -> FakeSlack:
    return FakeSlack().start()
