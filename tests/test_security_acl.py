"""The least-privilege ACL user of docs/security.md: web, worker (with a retry) and `slackq status`
run under it with no denial in Redis's ACL LOG, and it can do nothing outside BullMQ's needs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bullmq
import httpx
import pytest
import redis

from harness.slack_standin import FakeSlack, server_error
from slackq.embedded import PROJECT_ROOT, RedisProcess
from tests.processes import process_env
from tests.security_support import procfile_stack
from tests.slack_requests import app_mention_envelope, encode, signed_headers

ADMIN_PASSWORD = "acl-admin-password-91c2"
USER_PASSWORD = "acl-user-password-3b8e"


def acl_rule() -> list[str]:
    """The rule in docs/security.md (the fenced `acl` block), as ACL SETUSER arguments."""
    text = (PROJECT_ROOT / "docs" / "security.md").read_text()
    [block] = re.findall(r"```acl\n(.*?)```", text, re.S)
    return [f">{USER_PASSWORD}" if token == ">PASSWORD" else token for token in block.split()]


def allowed_commands() -> set[str]:
    return {token[1:].upper() for token in acl_rule() if token.startswith("+")}


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, redis.Redis]]:
    server = RedisProcess(data_dir=tmp_path / "redis", overrides={"requirepass": ADMIN_PASSWORD})
    server.start()
    admin = redis.Redis(port=server.port, password=ADMIN_PASSWORD, decode_responses=True)
    try:
        rule = acl_rule()
        if admin.info("server")["redis_version"] >= "7.2":
            rule.append("+client|setinfo")  # docs/security.md: 7.2+ only
        assert admin.execute_command("ACL", "SETUSER", "slackq", *rule) in ("OK", True)
        admin.execute_command("ACL", "LOG", "RESET")
        yield server, admin
    finally:
        admin.close()
        server.kill()


def user_url(server: RedisProcess) -> str:
    return f"redis://slackq:{USER_PASSWORD}@127.0.0.1:{server.port}/0"


def test_every_command_in_bullmq_lua_scripts_is_allowed(
    acl_redis: tuple[RedisProcess, redis.Redis],
) -> None:
    _server, admin = acl_redis
    known = {name.upper() for name in admin.execute_command("COMMAND LIST")}
    scripts = Path(bullmq.__file__).parent / "commands"
    used: set[str] = set()
    for script in scripts.glob("*.lua"):
        used |= {t for t in re.findall(r"['\"]([A-Z]+)['\"]", script.read_text()) if t in known}
    assert len(used) > 40  # the extraction itself works
    assert used <= allowed_commands(), used - allowed_commands()


def test_pipeline_runs_under_the_acl_user(
    acl_redis: tuple[RedisProcess, redis.Redis], fake_slack: FakeSlack, tmp_path: Path
) -> None:
    server, admin = acl_redis
    # The first reply fails (HTTP 500): the job is retried after its backoff (delayed set,
    # promotion, second attempt), all under the ACL user.
    fake_slack.script("chat.postMessage", server_error(500))
    with procfile_stack(user_url(server), fake_slack, tmp_path) as (base, _web, _worker):
        body = encode(app_mention_envelope("Ev0ACL0001"))
        response = httpx.post(f"{base}/slack/events", content=body,
                              headers=signed_headers(body), timeout=5)
        assert response.status_code == 200
        calls = fake_slack.wait_for_calls("chat.postMessage", 2, timeout=30)
        assert [c.args["channel"] for c in calls] == ["C0CHAN001", "C0CHAN001"]
        status = subprocess.run(
            [str(Path(sys.executable).parent / "slackq"), "status", "--json"],
            env=process_env(REDIS_URL=user_url(server)), capture_output=True, text=True,
            timeout=30)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["worker_connections"] >= 2  # every connection of the worker is named
        assert report["redis"]["appendfsync"] is None  # CONFIG is not granted
    assert admin.zrange("bull:slack-events:completed", 0, -1) == ["Ev0ACL0001"]
    # The only denial: `slackq status` asking CONFIG GET appendfsync (reported as unknown).
    denials = admin.execute_command("ACL", "LOG")
    assert [d["object"] for d in denials] == ["config|get"], denials


def test_the_user_can_do_nothing_else(acl_redis: tuple[RedisProcess, redis.Redis]) -> None:
    server, admin = acl_redis
    admin.set("sessions:U1", "someone else's data")
    with redis.Redis.from_url(user_url(server), decode_responses=True) as user:
        assert user.ping() is True
        user.set("bull:slack-events:probe", "1")
        for forbidden in (lambda: user.flushall(), lambda: user.flushdb(),
                          lambda: user.config_get("*"), lambda: user.keys("*"),
                          lambda: user.get("sessions:U1"), lambda: user.set("other:key", "x"),
                          lambda: user.execute_command("ACL", "LIST"),
                          lambda: user.publish("other:channel", "x"),
                          lambda: user.execute_command("SHUTDOWN")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
    assert admin.get("sessions:U1") == "someone else's data"
