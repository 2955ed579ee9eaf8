"""The dashboard in a real browser: Playwright driving Debian's Chromium against the web process
(webhook + dashboard), a real worker process, a real redis-server and the Slack stand-in.

Only synchronous tests here: an open `sync_playwright()` breaks any asyncio loop in this thread.
With `SLACKQ_SCREENSHOTS=<dir>` the screenshots taken on the way are also copied there
(`SLACKQ_SCREENSHOTS=docs/dashboard` refreshes the docs' pictures).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from harness.slack_standin import FakeSlack, slack_error
from slackq.embedded import RedisProcess
from tests.browser_support import (
    CHROMIUM_ARGS,
    chromium_path,
    fake_slack,
    post_event,
    serve,
    worker_process,
)
from tests.dashboard_support import ADMIN, READONLY, XSS_IMG, XSS_SCRIPT, admin_settings, mention
from tests.waiting import wait_until_sync

pytestmark = pytest.mark.slow
SHOT_MAX_BYTES = 400_000
SHOT_MAX_HEIGHT = 1000  # pixels: the docs show the top of long pages


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = fake_slack()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisProcess(data_dir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.kill()


@pytest.fixture(scope="module")
def base_url(redis_url: str, slack: FakeSlack,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = admin_settings(redis_url, slack.base_url, job_attempts=1)
    with serve(settings) as url, worker_process(settings, tmp_path_factory.mktemp("logs")):
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _context(browser: Browser, login: tuple[str, str] | None) -> BrowserContext:
    credentials = {"username": login[0], "password": login[1]} if login else None
    return browser.new_context(http_credentials=credentials,  # type: ignore[arg-type]
                               viewport={"width": 1280, "height": 800})


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = _context(browser, ADMIN)
    admin_page = context.new_page()
    admin_page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm prompts
    yield admin_page
    context.close()


def _shot(page: Page, shots: Path, name: str) -> None:
    path = shots / f"{name}.png"
    height = min(int(page.evaluate("document.documentElement.scrollHeight")), SHOT_MAX_HEIGHT)
    page.screenshot(path=str(path), full_page=True,
                    clip={"x": 0, "y": 0, "width": 1280, "height": height})
    assert 0 < path.stat().st_size < SHOT_MAX_BYTES
    if target := os.environ.get("SLACKQ_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def _finished(url: str, *job_ids: str) -> None:
    """Wait until the worker has finished (failed or completed) each of `job_ids`, and the web
    process has indexed it (in the background, just after the ack)."""
    def done(client: redis.Redis) -> bool:
        return all((client.zscore("bull:slack-events:failed", job_id) is not None
                    or client.zscore("bull:slack-events:completed", job_id) is not None)
                   and client.hexists("bull:slackq:slack-events:index:terms", job_id)
                   for job_id in job_ids)

    with _redis(url) as client:
        wait_until_sync(lambda: done(client), what=f"jobs {job_ids} finished")


def _search(page: Page, base_url: str, state: str, **fields: str) -> None:
    page.goto(f"{base_url}/admin/jobs")
    page.locator("#filters select[name=state]").select_option(state)
    for name, value in fields.items():
        page.locator(f"#filters input[name={name}]").fill(value)
    page.locator("#filters button").click()


def test_no_credentials_is_401(browser: Browser, base_url: str) -> None:
    context = _context(browser, None)
    response = context.request.get(f"{base_url}/admin/")
    assert response.status == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert context.request.get(f"{base_url}/admin/", headers={
        "Authorization": "Basic YWRtaW46d3Jvbmc="}).status == 401  # admin:wrong
    context.close()


def test_counts_match_redis(page: Page, base_url: str, redis_url: str, slack: FakeSlack,
                            shots: Path) -> None:
    slack.script("chat.postMessage", slack_error("channel_not_found"))
    post_event(base_url, mention("EvCount1", "CBROKEN", "please deploy the billing service"))
    post_event(base_url, mention("EvCount2", "COK", "hello there"))
    _finished(redis_url, "EvCount1", "EvCount2")
    page.goto(f"{base_url}/admin/")
    with _redis(redis_url) as client:
        for state in ("failed", "completed"):
            expected = str(client.zcard(f"bull:slack-events:{state}"))
            expect(page.locator(f"#count-{state} .n")).to_have_text(expected)
        expect(page.locator("#count-wait .n")).to_have_text(
            str(client.llen("bull:slack-events:wait")))
    expect(page.locator("#workers")).to_contain_text("python")
    expect(page.locator("#health")).to_contain_text("noeviction")
    expect(page.locator("#period-hour .chart.completed figcaption")).not_to_contain_text(
        "completed: 0 ")
    # The worker sends its waits every 5 s; the page refreshes itself every 5 s.
    expect(page.locator("#period-hour .chart.wait figcaption")).to_contain_text(
        "job(s)", timeout=20_000)
    _shot(page, shots, "overview")


def test_find_failed_job_read_reason_retry_it(page: Page, base_url: str, redis_url: str,
                                              slack: FakeSlack, shots: Path) -> None:
    slack.script("chat.postMessage", slack_error("channel_not_found"))
    post_event(base_url, mention("EvFind1", "CFIND", "restart the invoicing queue"))
    post_event(base_url, mention("EvFind2", "CFIND2", "restart the mail queue", ts="1700000001.0"))
    _finished(redis_url, "EvFind1", "EvFind2")
    _search(page, base_url, "failed", channel="CFIND")
    expect(page.locator("tr.job")).to_have_count(1)
    expect(page.locator("tr.job .reason")).to_contain_text("channel_not_found")
    _search(page, base_url, "all", text="Invoicing RESTART")
    expect(page.locator("tr.job[data-id=EvFind1]")).to_be_visible()
    expect(page.locator("tr.job")).to_have_count(1)
    _shot(page, shots, "jobs")
    page.locator("tr.job a", has_text="EvFind1").click()
    expect(page.locator("#failed-reason")).to_contain_text("channel_not_found")
    expect(page.locator("#job-text")).to_have_text("restart the invoicing queue")
    _shot(page, shots, "job")
    page.locator("form", has_text="Retry").locator("button").click()
    # The stand-in answers ok now: the worker completes the retried job; the page refreshes.
    expect(page.locator("#job-state")).to_have_text("completed", timeout=20_000)
    expect(page.locator("#effects")).to_contain_text("reply")


def test_hostile_text_renders_as_text_and_runs_nothing(browser: Browser, base_url: str,
                                                       redis_url: str) -> None:
    post_event(base_url, mention("EvXss1", "CXSS", XSS_IMG))
    post_event(base_url, mention("EvXss2", "CXSS", XSS_SCRIPT))
    _finished(redis_url, "EvXss1", "EvXss2")
    context = _context(browser, ADMIN)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{base_url}/admin/jobs?state=all&channel=CXSS")
    expect(page.locator("tr.job[data-id=EvXss1] .text")).to_have_text(XSS_IMG)
    expect(page.locator("tr.job[data-id=EvXss2] .text")).to_have_text(XSS_SCRIPT)
    assert page.locator("#jobs img").count() == 0 and page.locator("#jobs script").count() == 0
    page.goto(f"{base_url}/admin/jobs/EvXss1")
    expect(page.locator("#job-text")).to_have_text(XSS_IMG)
    expect(page.locator("#job-data")).to_contain_text(XSS_IMG)
    assert page.locator("main img").count() == 0
    expect(page.locator("html")).to_have_attribute("data-js", "ready")  # our own script ran
    assert dialogs == []
    context.close()


def test_pause_and_resume(page: Page, base_url: str, redis_url: str) -> None:
    page.goto(f"{base_url}/admin/")
    page.locator("#queue-state button", has_text="Pause").click()
    expect(page.locator("#queue-state strong")).to_have_text("paused")
    with _redis(redis_url) as client:
        assert client.hexists("bull:slack-events:meta", "paused")
        page.locator("#queue-state button", has_text="Resume").click()
        expect(page.locator("#queue-state strong")).to_have_text("running")
        assert not client.hexists("bull:slack-events:meta", "paused")


def test_bulk_retry_counts_first(page: Page, base_url: str, redis_url: str, slack: FakeSlack,
                                 shots: Path) -> None:
    slack.script("chat.postMessage", *[slack_error("channel_not_found")] * 2)
    post_event(base_url, mention("EvBulk1", "CBULK", "first broken"))
    post_event(base_url, mention("EvBulk2", "CBULK", "second broken"))
    _finished(redis_url, "EvBulk1", "EvBulk2")
    _search(page, base_url, "failed", channel="CBULK")
    expect(page.locator("tr.job")).to_have_count(2)
    page.locator("#bulk button", has_text="retry all").click()
    expect(page.locator("#bulk-count strong")).to_have_text("2")
    with _redis(redis_url) as client:  # the dry run changed nothing
        assert client.zscore("bull:slack-events:failed", "EvBulk1") is not None
    _shot(page, shots, "bulk")
    page.locator("button", has_text="Confirm").click()
    expect(page.locator("#bulk-done strong")).to_have_text("2")
    with _redis(redis_url) as client:
        _finished(redis_url, "EvBulk1", "EvBulk2")
        assert client.zscore("bull:slack-events:failed", "EvBulk1") is None
    page.goto(f"{base_url}/admin/audit")
    expect(page.locator("#audit")).to_contain_text("failed jobs with channel=CBULK")
    _shot(page, shots, "audit")


def test_post_without_csrf_token_is_403(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/admin/")
    assert page.request.post(f"{base_url}/admin/queue/pause", form={}).status == 403
    assert page.request.post(f"{base_url}/admin/queue/pause",
                             form={"csrf": "1.deadbeef"}).status == 403


def test_readonly_login_cannot_act(browser: Browser, page: Page, base_url: str, redis_url: str,
                                   shots: Path) -> None:
    post_event(base_url, mention("EvRead1", "CREAD", "look but do not touch"))
    _finished(redis_url, "EvRead1")
    page.goto(f"{base_url}/admin/jobs/EvRead1")
    token = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    context = _context(browser, READONLY)
    readonly = context.new_page()
    readonly.goto(f"{base_url}/admin/jobs/EvRead1")
    expect(readonly.locator("#who")).to_contain_text("read-only")
    assert readonly.locator("form[method=post]").count() == 0
    response = readonly.request.post(f"{base_url}/admin/jobs/EvRead1/remove",
                                     form={"csrf": token})
    assert response.status == 403
    with _redis(redis_url) as client:  # worker/limiter.py's hold after a 429: Redis-time ms
        client.set("bull:slackq:slack-events:rate:hold:T0TEAM001:CREAD",
                   int(client.time()[0]) * 1000 + 30_000, px=31_000)
    readonly.goto(f"{base_url}/admin/teams")
    expect(readonly.locator("#teams")).to_contain_text("T0TEAM001")
    expect(readonly.locator("#holds")).to_contain_text("CREAD")
    _shot(readonly, shots, "teams")
    context.close()
    page.reload()
    expect(page.locator("#job-state")).to_have_text("completed")  # still there


def test_no_csp_violation_on_any_page(page: Page, base_url: str, redis_url: str) -> None:
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text)
            if re.search("Content Security Policy|Refused", message.text) else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    post_event(base_url, mention("EvCsp1", "CCSP", "a page per view"))
    _finished(redis_url, "EvCsp1")
    for path in ("/", "/jobs?state=completed", "/jobs/EvCsp1", "/teams", "/audit"):
        response = page.goto(f"{base_url}/admin{path}")
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
    assert problems == []
