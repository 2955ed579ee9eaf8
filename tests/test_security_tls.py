"""`rediss://` TLS + password: the whole pipeline runs over TLS; a wrong password or an
unverifiable certificate stops the web and worker processes at start-up with one clear line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.slack_standin import FakeSlack
from tests.security_support import (
    Certificates,
    TLSRedis,
    make_certificates,
    procfile_stack,
    start_fails,
    tls_unavailable_reason,
)
from tests.slack_requests import app_mention_envelope, encode, signed_headers

_REASON = tls_unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

PASSWORD = "tls-test-password-7f3a9c"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_redis(tmp_path: Path, certs: Certificates) -> Iterator[TLSRedis]:
    server = TLSRedis(data_dir=tmp_path / "redis", certs=certs, password=PASSWORD)
    server.start()
    yield server
    server.kill()


def test_server_speaks_tls_only(tls_redis: TLSRedis) -> None:
    """A plain-text client gets nothing useful from the port: the pipeline below really is TLS."""
    with socket.create_connection(("127.0.0.1", tls_redis.tls_port), timeout=5) as raw:
        raw.sendall(b"PING\r\n")
        raw.settimeout(5)
        try:
            answer = raw.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""
    assert b"PONG" not in answer and b"NOAUTH" not in answer


def test_pipeline_over_tls_with_password(
    tls_redis: TLSRedis, fake_slack: FakeSlack, tmp_path: Path
) -> None:
    with procfile_stack(tls_redis.url, fake_slack, tmp_path) as (base, _web, _worker):
        body = encode(app_mention_envelope("Ev0TLS0001"))
        response = httpx.post(f"{base}/slack/events", content=body, headers=signed_headers(body),
                              timeout=5)
        assert response.status_code == 200
        [call] = fake_slack.wait_for_calls("chat.postMessage", 1)
        assert call.args["channel"] == "C0CHAN001"


def _assert_one_clear_line(code: int, output: str, *must_contain: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for text in must_contain:
        assert text in lines[0], output


@pytest.mark.parametrize("process", ["web", "worker"])
def test_wrong_password_fails_start_up_with_one_line(
    process: str, tls_redis: TLSRedis, tmp_path: Path
) -> None:
    url = tls_redis.url.replace(PASSWORD, "not-the-password")
    code, output = start_fails(process, url, tmp_path)
    _assert_one_clear_line(code, output, f"127.0.0.1:{tls_redis.tls_port}", "password")
    assert "not-the-password" not in output and PASSWORD not in output


@pytest.mark.parametrize("process", ["web", "worker"])
def test_unverifiable_certificate_fails_start_up_with_one_line(
    process: str, tls_redis: TLSRedis, tmp_path: Path
) -> None:
    """Without the CA the server's certificate cannot be verified: refuse, do not downgrade."""
    url = tls_redis.url.split("?", 1)[0]
    code, output = start_fails(process, url, tmp_path)
    _assert_one_clear_line(code, output, "TLS")
    assert PASSWORD not in output
