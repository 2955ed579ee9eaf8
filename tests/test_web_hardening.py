"""The real web process (the Procfile's `web`) under a hostile or careless client.

* `/health/redis` and `/metrics` on the public port reuse their Redis connections and their
  answer for about a second: many requests open no new connections.
* A body declared larger than 1 MiB gets 413 before any of it is sent; a body that trickles in
  gets 408 within `WEB_BODY_TIMEOUT_SECONDS` and its connection is closed (one that comes in two
  parts within it is stored); beyond
  `WEB_MAX_CONCURRENCY` connections a request gets 503, and slots come back once the slow
  bodies time out.
* A connection that sends no request, or half of its headers, is closed after
  `WEB_HEADER_TIMEOUT_SECONDS` (producers/http_protocol.py); kept-alive and pipelined requests
  still work.

Raw sockets, so that the client does exactly what a hostile one would.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from slackq.embedded import RedisProcess, free_port
from tests.processes import Proc, process_env, wait_http_ok
from tests.slack_requests import SIGNING_SECRET, app_mention_envelope, encode, signed_headers
from tests.waiting import wait_until_sync

FORM = b"application/x-www-form-urlencoded"
DEADLINE = 20.0  # seconds a test waits for an answer before calling the server stuck


def start_web(redis_url: str, log_dir: Path, **env: str) -> tuple[int, Proc]:
    port = free_port()
    web = Proc("web", process_env(REDIS_URL=redis_url, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                                  PORT=str(port), **env), log_dir)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=60, proc=web)
    except BaseException:
        web.stop()
        raise
    return port, web


@contextmanager
def short_timeouts_web(redis_url: str, log_dir: Path) -> Iterator[int]:
    """A web process whose body and header deadlines are 1 s; yields its port."""
    port, proc = start_web(redis_url, log_dir, WEB_BODY_TIMEOUT_SECONDS="1",
                           WEB_HEADER_TIMEOUT_SECONDS="1")
    try:
        yield port
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def web(module_redis: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One web process (and its Redis) for the module's tests that only talk to it; each closes
    its connections. The test that stops Redis has its own (`lone_web`)."""
    with short_timeouts_web(module_redis.url, tmp_path_factory.mktemp("web")) as port:
        yield port


@pytest.fixture
def redis_client(module_redis: RedisProcess) -> Iterator[redis.Redis]:
    """A client of the shared web's Redis, emptied first (what a web of its own would find)."""
    with redis.Redis.from_url(module_redis.url, decode_responses=True) as client:
        client.flushall()
        yield client


@pytest.fixture
def lone_web(redis_server: RedisProcess, tmp_path: Path) -> Iterator[int]:
    with short_timeouts_web(redis_server.url, tmp_path) as port:
        yield port


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    return sock


def post_head(length: int, path: str = "/slack/events") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: slackq.test\r\nContent-Type: application/json\r\n"
            f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0=00\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or DEADLINE passes)."""
    data = b""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection not closed within {DEADLINE}s; got {data[:200]!r}")


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_health_and_metrics_open_no_connection_per_request(
    web: int, redis_client: redis.Redis,
) -> None:
    base = f"http://127.0.0.1:{web}"
    for path in ("/health/redis", "/metrics"):  # each opens its one connection
        assert httpx.get(base + path, timeout=DEADLINE).status_code == 200
    before = connections_received(redis_client)

    with httpx.Client(base_url=base, timeout=DEADLINE) as http:
        def hit(i: int) -> int:
            return http.get("/health/redis" if i % 2 else "/metrics").status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(hit, range(200)))
    assert statuses == [200] * 200
    opened = connections_received(redis_client) - before
    assert opened <= 1, f"{opened} Redis connections for 200 requests"  # this test's INFO
    assert int(redis_client.info("clients")["connected_clients"]) <= 4

    # Cached for about a second, not frozen: the counts follow the queue.
    redis_client.lpush("bull:slack-events:wait", "x")
    wait_until_sync(
        lambda: 'slackq_queue_jobs{queue="slack-events",state="wait"} 1.0'
        in httpx.get(base + "/metrics", timeout=DEADLINE).text,
        within=DEADLINE, what="/metrics shows the new waiting job")


def test_readiness_follows_redis_going_away(lone_web: int, redis_server: RedisProcess) -> None:
    url = f"http://127.0.0.1:{lone_web}/health/redis"
    assert httpx.get(url, timeout=DEADLINE).json()["healthy"] is True
    redis_server.kill()
    wait_until_sync(lambda: httpx.get(url, timeout=DEADLINE).status_code == 503,
                    within=DEADLINE, what="/health/redis answers 503")


@pytest.mark.parametrize("path", ["/slack/events", "/slack/commands", "/slack/interactivity"])
def test_declared_body_over_1_mib_is_413_before_it_is_sent(web: int, path: str) -> None:
    with connect(web) as sock:
        content_type = b"application/json" if path == "/slack/events" else FORM
        sock.sendall(post_head(1024 * 1024 + 1, path).replace(b"application/json", content_type))
        response = read_response(sock)  # not one byte of the body sent
    assert status_of(response) == 413, response[:200]
    assert b"body_too_large" in response
    assert b"connection: close" in response.lower()


def test_trickled_body_gets_408_and_the_connection_is_closed(web: int) -> None:
    with connect(web) as sock:
        sock.sendall(post_head(1000))
        sock.setblocking(False)
        started = time.monotonic()
        response = b""
        while time.monotonic() - started < DEADLINE:
            try:
                sock.send(b" ")  # one byte of body every 0.2 s: never idle, never done
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                response += chunk
        else:
            raise AssertionError(f"a trickling body held the connection {DEADLINE}s")
    assert status_of(response) == 408, response[:200]
    assert b"body_timeout" in response


def test_concurrency_limit_answers_503_and_slow_bodies_give_their_slots_back(
    redis_server: RedisProcess, tmp_path: Path,
) -> None:
    limit = 4
    port, proc = start_web(redis_server.url, tmp_path, WEB_MAX_CONCURRENCY=str(limit),
                           WEB_BODY_TIMEOUT_SECONDS="3")
    try:
        with ExitStack() as stack:
            # uvicorn counts the new connection too: limit - 1 others make it wait.
            stalled = [stack.enter_context(connect(port)) for _ in range(limit - 1)]
            for sock in stalled:  # headers and part of the body, then nothing
                sock.sendall(post_head(100) + b"{")
            with connect(port) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: slackq.test\r\n\r\n")
                assert status_of(extra.recv(65536)) == 503
            for sock in stalled:  # the body timeout ends each of them: 408, closed
                assert status_of(read_response(sock)) == 408
        wait_http_ok(f"http://127.0.0.1:{port}/health", timeout=DEADLINE, proc=proc)
    finally:
        proc.stop()


def closed_without_answer(sock: socket.socket) -> bool:
    return read_response(sock) == b""


@pytest.mark.parametrize("sent", [b"", b"POST /slack/events HTTP/1.1\r\nHost: slackq.test\r\n"],
                         ids=["nothing", "half the headers"])
def test_a_connection_without_complete_headers_is_closed(web: int, sent: bytes) -> None:
    with connect(web) as sock:
        sock.sendall(sent)
        assert closed_without_answer(sock)


def test_kept_alive_and_pipelined_requests_still_work_then_a_half_request_is_closed(
    web: int, redis_client: redis.Redis,
) -> None:
    get = b"GET /health HTTP/1.1\r\nHost: slackq.test\r\n\r\n"
    # First a body whose second half comes after the handler started (its deadline set, unlike
    # a body that arrives whole): read, verified and stored.
    body = encode(app_mention_envelope("Ev0SPLIT01"))
    head = "".join(f"{name}: {value}\r\n" for name, value in signed_headers(body).items())
    post = (f"POST /slack/events HTTP/1.1\r\nHost: slackq.test\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    def answers(sock: socket.socket, count: int) -> bytes:
        data = b""
        while data.count(b'{"healthy":true}') < count:  # each answer ends with this body
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        return data

    with connect(web) as sock:
        sock.sendall(post + body[:40])
        time.sleep(0.3)  # well within WEB_BODY_TIMEOUT_SECONDS=1
        sock.sendall(body[40:])
        assert status_of(sock.recv(65536)) == 200
        assert redis_client.lrange("bull:slack-events:wait", 0, -1) == ["Ev0SPLIT01"]
        sock.sendall(get)
        assert answers(sock, 1).startswith(b"HTTP/1.1 200")
        sock.sendall(get + get)  # two at once: the second waits for the first's answer
        assert answers(sock, 2).count(b"HTTP/1.1 200") == 2
        sock.sendall(b"GET /health HTTP/1.1\r\n")  # and then nothing
        assert closed_without_answer(sock)


def test_the_uvicorn_internals_the_header_deadline_relies_on() -> None:
    """If uvicorn changes any of these, producers/http_protocol.py breaks: re-check it."""
    import inspect

    from uvicorn.protocols.http import httptools_impl

    protocol = httptools_impl.HttpToolsProtocol
    for method in ("connection_made", "connection_lost", "on_headers_complete",
                   "on_response_complete"):
        assert callable(getattr(protocol, method, None)), (
            f"producers/http_protocol.py: uvicorn's HttpToolsProtocol has no {method}")
    init = inspect.getsource(protocol.__init__)
    assert "self.loop =" in init and "self.transport" in init and "self.cycle" in init, (
        "producers/http_protocol.py: HttpToolsProtocol no longer sets loop/transport/cycle")
    assert "self.response_complete" in inspect.getsource(httptools_impl.RequestResponseCycle), (
        "producers/http_protocol.py: a request cycle no longer has response_complete")
    cycle = inspect.getsource(httptools_impl.RequestResponseCycle.__init__)
    assert "self.more_body" in cycle and "self.message_event" in cycle, (
        "producers/http_protocol.py (body_buffered): a request cycle no longer has more_body "
        "or message_event")
    assert "self.message_event.wait()" in inspect.getsource(
        httptools_impl.RequestResponseCycle.receive), (
        "producers/http_protocol.py (body_buffered): receive() no longer waits on message_event")
