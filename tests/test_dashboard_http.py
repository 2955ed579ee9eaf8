"""The dashboard over HTTP (in process, real redis-server): auth, CSRF, escaping, pages, actions.

The same behaviours in a real browser: tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from bullmq import Queue, Worker
from starlette.applications import Starlette

from dashboard.actions import describe
from dashboard.app import Dashboard
from dashboard.history import bucket, bullmq_metrics, throughput
from dashboard.queries import worker_connections
from dashboard.security import Csrf
from slackq.connection import DASHBOARD, bullmq_connection, redis_client
from slackq.embedded import RedisProcess, free_port
from slackq.errors import ConfigError
from slackq.job_index import Filters, JobIndex
from slackq.settings import Settings
from tests.dashboard_support import (
    ADMIN,
    READONLY,
    XSS_IMG,
    XSS_SCRIPT,
    admin_settings,
    mention,
    post_mentions,
    settle_with_failures,
)
from tests.processes import Proc, process_env, wait_http_ok
from tests.waiting import wait_until
from tests.webhook_client import webhook

SLACKQ = str(Path(sys.executable).parent / "slackq")


@pytest.fixture
def settings(module_redis: RedisProcess) -> Settings:
    with redis.Redis.from_url(module_redis.url) as client:
        client.flushall()
    return admin_settings(module_redis.url, job_attempts=1)


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with webhook(settings) as client:
        client.auth = ADMIN
        yield client


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


async def test_not_served_without_admin_password(module_redis: RedisProcess) -> None:
    settings = Settings(redis_url=module_redis.url, slack_signing_secret="x" * 32)
    async with webhook(settings) as client:
        assert (await client.get("/admin/")).status_code == 404


async def test_credentials_are_required_and_checked(settings: Settings) -> None:
    async with webhook(settings) as client:
        anonymous = await client.get("/admin/")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        assert "default-src 'none'" in anonymous.headers["content-security-policy"]
        assert (await client.get("/admin/", auth=(ADMIN[0], "wrong"))).status_code == 401
        assert (await client.get("/admin/", auth=(READONLY[0], ADMIN[1]))).status_code == 401
        assert (await client.get("/admin/", auth=("", ""))).status_code == 401
        assert (await client.get("/admin/", headers={"Authorization": "Basic !!"})).status_code \
            == 401
        ok = await client.get("/admin/", auth=ADMIN)
        assert ok.status_code == 200 and ok.headers["x-frame-options"] == "DENY"


async def test_posts_need_admin_same_origin_and_token(admin: httpx.AsyncClient) -> None:
    token = _csrf((await admin.get("/admin/")).text)
    assert (await admin.post("/admin/queue/pause", data={})).status_code == 403
    assert (await admin.post("/admin/queue/pause", data={"csrf": "1.00"})).status_code == 403
    cross = await admin.post("/admin/queue/pause", data={"csrf": token},
                             headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    other = await admin.post("/admin/queue/pause", data={"csrf": token},
                             headers={"Origin": "https://evil.example"})
    assert other.status_code == 403
    readonly = await admin.post("/admin/queue/pause", data={"csrf": token}, auth=READONLY)
    assert readonly.status_code == 403
    assert not await admin.app.state.enqueuer.queue.isPaused()  # type: ignore[attr-defined]
    done = await admin.post("/admin/queue/pause", data={"csrf": token})
    assert done.status_code == 303
    assert await admin.app.state.enqueuer.queue.isPaused()  # type: ignore[attr-defined]


def test_csrf_tokens_are_bound_to_user_and_time() -> None:
    csrf = Csrf("secret", max_age=60)
    token = csrf.issue("admin", now=1000)
    assert csrf.valid("admin", token, now=1030)
    assert not csrf.valid("other", token, now=1030)
    assert not csrf.valid("admin", token, now=1061)
    assert not Csrf("another password").valid("admin", token, now=1030)
    assert not csrf.valid("admin", "", now=1030)


async def test_jobs_search_detail_escaping_and_actions(settings: Settings,
                                                       admin: httpx.AsyncClient) -> None:
    await post_mentions(settings, [
        mention("EvF1", "CFAIL", f"fail {XSS_IMG}"),
        mention("EvF2", "CFAIL", f"fail {XSS_SCRIPT} xoxb-123-secret-token"),
        mention("EvOK", "COK", "all good"),
    ])
    await settle_with_failures(settings, "fail", 3)

    overview = (await admin.get("/admin/")).text
    assert "Nothing is waiting." in overview
    assert re.search(r'id="count-failed"[^>]*><span class="n">2<', overview)
    assert re.search(r'id="count-completed"[^>]*><span class="n">1<', overview)

    found = (await admin.get("/admin/jobs", params={"state": "failed", "channel": "CFAIL",
                                                    "text": "onerror"})).text
    assert 'data-id="EvF1"' in found and 'data-id="EvF2"' not in found
    assert "&lt;img src=x onerror=alert(1)&gt;" in found and XSS_IMG not in found

    detail = (await admin.get("/admin/jobs/EvF2")).text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in detail and XSS_SCRIPT not in detail
    assert "secret-token" not in detail and "legacy-verification-token" not in detail
    assert "failed on purpose" in detail
    assert "https://slack.com/archives/CFAIL/p1700000000000100" in detail

    token = _csrf(detail)
    retried = await admin.post("/admin/jobs/EvF2/retry", data={"csrf": token})
    assert retried.status_code == 303
    assert await admin.app.state.enqueuer.queue.getJobState("EvF2") == "waiting"  # type: ignore[attr-defined]
    assert re.search(r"oldest waiting job was stored \d+\.\d s ago",
                     (await admin.get("/admin/")).text)

    dry = await admin.post("/admin/bulk", data={"csrf": token, "action": "clean",
                                                "state": "failed", "channel": "CFAIL"})
    assert re.search(r"would clean <strong>1</strong>", dry.text)
    assert await admin.app.state.enqueuer.queue.getJobState("EvF1") == "failed"  # type: ignore[attr-defined]
    done = await admin.post("/admin/bulk", data={"csrf": token, "action": "clean",
                                                 "state": "failed", "channel": "CFAIL",
                                                 "confirm": "yes"})
    assert re.search(r"applied to <strong>1</strong>", done.text)
    assert await admin.app.state.enqueuer.queue.getJobState("EvF1") == "unknown"  # type: ignore[attr-defined]

    audit = (await admin.get("/admin/audit")).text
    assert "retry" in audit and "job EvF2" in audit and "clean all" in audit
    assert "failed jobs with channel=CFAIL" in audit


async def test_teams_page_lists_teams_and_held_channels(settings: Settings,
                                                        admin: httpx.AsyncClient) -> None:
    await post_mentions(settings, [mention("EvT1", "CHELD", "hi", team="TFLOOD"),
                                   mention("EvT2", "CFREE", "hi", team="TFLOOD")])
    with redis.Redis.from_url(settings.redis_url) as client:
        now_ms = int(client.time()[0]) * 1000
        # worker/limiter.py's hold: Redis-time ms until which the channel is held.
        client.set("bull:slackq:slack-events:rate:hold:TFLOOD:CHELD", now_ms + 30_000, px=31_000)
    page = (await admin.get("/admin/teams")).text
    assert re.search(r"TFLOOD</a></td><td>2</td>", page)  # two queued
    assert re.search(r"<td>TFLOOD</td><td>CHELD</td><td>(29|30)\.\d s</td>", page)
    assert "CFREE</td>" not in page


def test_worker_connections_python_and_node() -> None:
    clients = [{"name": "bull:slack-events", "addr": "10.0.0.1:5000", "age": "7"},
               {"name": "bull:slack-events", "addr": "10.0.0.1:5001", "age": "9"},
               {"name": "bull:c2xhY2stZXZlbnRz:w:node-1", "addr": "10.0.0.2:6000", "age": "3"},
               {"name": "bull:other-queue", "addr": "10.0.0.3:1", "age": "1"},
               {"name": "", "addr": "10.0.0.4:1", "age": "1"}]
    groups = {g["name"]: g for g in worker_connections(clients, "bull", "slack-events")}
    assert set(groups) == {"bull:slack-events", "bull:c2xhY2stZXZlbnRz:w:node-1"}
    assert groups["bull:slack-events"]["connections"] == 2
    assert groups["bull:slack-events"]["age"] == 9
    assert groups["bull:c2xhY2stZXZlbnRz:w:node-1"]["runtime"] == "node"


def test_bucket_sums_minutes_into_bars() -> None:
    now = 1_700_000_040  # a minute start
    counts = {now: 1, now - 60: 2, now - 14 * 60: 3, now - 15 * 60: 4, now - 10**6: 9}
    assert bucket(counts, now, 60, 1)[-2:] == [2, 1]
    assert bucket(counts, now, 60, 15)[-2:] == [4, 6]


def test_describe_bulk_target() -> None:
    assert describe("failed", Filters()) == "failed jobs"
    assert describe("failed", Filters(channel="C1")).startswith("failed jobs with channel=C1")


def test_slackq_dashboard_serves_loopback_without_login(module_redis: RedisProcess,
                                                         tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("dashboard", process_env(REDIS_URL=module_redis.url), tmp_path,
                command=[SLACKQ, "dashboard", "--port", str(port)])
    try:
        proc.wait_for_output("no login asked")
        url = f"http://127.0.0.1:{port}/admin/"
        wait_http_ok(url, proc=proc)
        page = httpx.get(url, timeout=10)
        assert "no login on loopback" in page.text and "Pause" in page.text
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 307
        # A page whose domain was rebound to 127.0.0.1 names another host: it must log in.
        rebound = httpx.get(url, headers={"Host": f"evil.example:{port}"}, timeout=10)
        assert rebound.status_code == 401
        token = _csrf(page.text)
        cross = httpx.post(f"{url}queue/pause", data={"csrf": token}, timeout=10,
                           headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
    finally:
        proc.stop()


async def test_throughput_reads_bullmq_metrics_and_stored_counts(settings: Settings) -> None:
    """Completed and failed per minute come from BullMQ's metrics, which a worker keeps when it
    runs with the `metrics` option; stored comes from the index."""
    await post_mentions(settings, [mention(f"EvM{n}", "CM", "fail" if n == 0 else "fine")
                                   for n in range(3)])
    queue = Queue(settings.queue_name, {"connection": bullmq_connection(settings.redis_url)})

    async def process(job: Any, _token: str) -> str:
        if job.data["event"]["text"] == "fail":
            raise RuntimeError("no")
        return "ok"

    worker = Worker(settings.queue_name, process, {
        "connection": bullmq_connection(settings.redis_url), "metrics": {"maxDataPoints": 60},
        "autorun": False})
    running = asyncio.create_task(worker.run())
    try:
        async def finished() -> bool:
            return await queue.getJobCounts("failed", "completed") == {"failed": 1,
                                                                       "completed": 2}
        await wait_until(finished)
    finally:
        await worker.close()
        await asyncio.gather(running, return_exceptions=True)  # no task left to the loop's end
        await queue.close()
    client = redis_client(settings.redis_url, DASHBOARD)
    index = JobIndex(client, "bull", settings.queue_name, 3600)
    try:
        history = await throughput(client, index, "bull:slack-events")
        # Read within the first second of the minute the jobs were stored in (1 run in ~60
        # did so by chance, and missed them): that minute is the current one, and counts.
        now_ms = int(time.time() * 1000)
        stored = await index.stored_per_minute(now_ms - 3_600_000, now_ms + 60_000)
        early = await throughput(client, index, "bull:slack-events", now=min(stored) + 0.2)
    finally:
        await client.aclose()
    for period in ("hour", "day", "week"):
        totals = {series.label: series.total for series in history[period]}
        assert totals == {"stored": 3, "completed": 2, "failed": 1}, period
        assert early[period][0].total == stored[min(stored)], period


async def test_bullmq_metrics_minutes(settings: Settings) -> None:
    """BullMQ's layout (moveToFinished's collectMetrics): data[i] is the minute i+1 before
    prevTS's; jobs since prevTS (count - prevCount) are in prevTS's minute."""
    minute = 1_700_000_040  # a minute start, in seconds
    with redis.Redis.from_url(settings.redis_url) as client:
        client.hset("bull:slack-events:metrics:completed",
                    mapping={"count": 10, "prevTS": minute * 1000 + 5_000, "prevCount": 7})
        client.rpush("bull:slack-events:metrics:completed:data", 0, 4)
    async_client = redis_client(settings.redis_url, DASHBOARD)
    try:
        counts = await bullmq_metrics(async_client, "bull:slack-events", "completed")
        assert counts == {minute: 3, minute - 120: 4}
        assert await bullmq_metrics(async_client, "bull:slack-events", "failed") == {}
    finally:
        await async_client.aclose()


async def test_redis_down_is_a_503_not_a_traceback(module_redis: RedisProcess) -> None:
    settings = admin_settings(f"redis://127.0.0.1:{free_port()}/0")
    dashboard = Dashboard.for_settings(settings)
    assert dashboard is not None
    app = Starlette(routes=[dashboard.mount()])
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://slackq.test", auth=ADMIN) as client:
            for path in ("/admin/", "/admin/jobs", "/admin/teams"):
                response = await client.get(path)
                assert response.status_code == 503, path
                assert "ConnectionError" in response.text and "127.0.0.1" not in response.text
    finally:
        await dashboard.close()


def test_admin_user_cannot_be_the_readonly_name(module_redis: RedisProcess) -> None:
    with pytest.raises(ConfigError, match="ADMIN_USER"):
        Dashboard.for_settings(admin_settings(module_redis.url, admin_user="readonly"))
