"""A loopback stand-in for the Slack Web API: the only fake the tests allow.

Tests start it in-process (`FakeSlack().start()`); a person runs it on its own to watch events go
all the way round without a Slack workspace (README "Try it"):

    python -m harness.slack_standin --port 8099     # then SLACK_API_URL=http://127.0.0.1:8099/api/

It speaks the wire format slack-sdk expects (`POST /api/<method>`, JSON `{"ok": ...}` bodies,
`ok:false` errors, HTTP 429 with `Retry-After`, 5xx) and records every call it receives.
Scripted responses are consumed per method in order; after them every call succeeds.

`oauth.v2.access` works as Slack's does for a multi-workspace app: an install code from
`grant_code()` is exchanged once for a new bot token (a rotating one, with a refresh token, when
the grant says it expires); a refresh token is exchanged once for the next pair, and a reused one
is answered `invalid_refresh_token` and recorded in `reused_refresh_tokens`. `token_of(call)`
tells which token a Web API call used. `GET /oauth/v2/authorize` plays Slack's approval page: it
approves at once (the next of `pending_grants`, else a default workspace) and redirects the
browser to the `redirect_uri` with a fresh code and the `state`, so `/slack/install` can be
followed all the way round (`SLACK_AUTHORIZE_URL=<base>/oauth/v2/authorize`).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    at: float
    client_port: int = 0  # the caller's TCP port: one per connection it opened


@dataclass
class Scripted:
    """One scripted answer: an HTTP status, a JSON body and extra headers."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=lambda: {"ok": True})
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Grant:
    """What an install code grants: a workspace (or an org-wide install) and the tokens' life."""

    team_id: str | None = "T0TEAM001"
    enterprise_id: str | None = None
    is_enterprise_install: bool = False
    expires_in: int | None = None  # None: no token rotation
    user_scope: str = ""
    app_id: str = "A0APP001"
    installer: str = "U0INSTALLER"
    scope: str = "app_mentions:read,chat:write,commands"


def slack_error(error: str) -> Scripted:
    return Scripted(200, {"ok": False, "error": error})


def rate_limited(retry_after: int) -> Scripted:
    return Scripted(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)})


def server_error(status: int = 500) -> Scripted:
    return Scripted(status, {"ok": False, "error": "fatal_error"})


class FakeSlack:
    """Run with `start()`; point `SLACK_API_URL` at `base_url`; read `calls`."""

    def __init__(self, port: int = 0, on_call: Callable[[Call], None] | None = None,
                 *, keep_alive: bool = False) -> None:
        """`keep_alive`: speak HTTP/1.1 and keep connections open, as Slack does (by default
        each answer closes its connection, HTTP/1.0)."""
        self.calls: list[Call] = []
        self._keep_alive = keep_alive
        self._on_call = on_call
        self._script: dict[str, list[Scripted]] = {}
        self._lock = threading.Lock()
        self._ts = 1_700_000_000
        self.client_id: str | None = None  # when set, oauth.v2.access checks the credentials
        self.client_secret: str | None = None
        self.refresh_expires_in = 43_200  # the life of a token issued for a refresh token
        self.oauth_delay = 0.0  # seconds oauth.v2.access takes to answer (a slow Slack)
        self.issued_tokens: list[str] = []
        self.reused_refresh_tokens: list[str] = []
        self._codes: dict[str, Grant] = {}
        self.pending_grants: list[Grant] = []  # what the next approvals grant, in order
        self._refresh: dict[str, Grant] = {}
        self._spent: set[str] = set()
        self._serial = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    @property
    def authorize_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/oauth/v2/authorize"

    def approve(self, query: dict[str, str]) -> str | None:
        """The approval page's answer: where to send the browser (None: no `redirect_uri`)."""
        redirect = query.get("redirect_uri")
        if not redirect:
            return None
        with self._lock:
            grant = self.pending_grants.pop(0) if self.pending_grants else Grant()
        code = self.grant_code(grant)
        joiner = "&" if urlsplit(redirect).query else "?"
        return f"{redirect}{joiner}{urlencode({'code': code, 'state': query.get('state', '')})}"

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def join(self) -> None:
        """Block until `stop()` (from another thread) or an interrupt."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def script(self, method: str, *answers: Scripted) -> None:
        with self._lock:
            self._script.setdefault(method, []).extend(answers)

    def grant_code(self, grant: Grant | None = None) -> str:
        """A one-use install code, as Slack puts it on the redirect after the user approves."""
        with self._lock:
            code = f"code-{next(self._serial)}"
            self._codes[code] = grant or Grant()
        return code

    def grant_refresh_token(self, grant: Grant) -> str:
        """A live refresh token for `grant` (for an installation a test stores itself)."""
        with self._lock:
            token = f"xoxe-1-refresh-{next(self._serial)}"
            self._refresh[token] = grant
        return token

    @staticmethod
    def token_of(call: Call) -> str | None:
        """The token a Web API call was made with (Bearer header or `token` argument)."""
        auth = call.headers.get("Authorization") or call.headers.get("authorization") or ""
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):]
        token = call.args.get("token")
        return str(token) if token else None

    def tokens_used(self, method: str) -> list[str | None]:
        return [self.token_of(call) for call in self.calls_to(method)]

    def forget_calls(self) -> None:
        """Start counting calls afresh (a stand-in shared by several tests)."""
        with self._lock:
            self.calls.clear()

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def wait_for_calls(self, method: str, count: int, timeout: float = 15.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls_to(method)
            if len(calls) >= count:
                return calls
            time.sleep(0.02)
        raise AssertionError(f"expected {count} {method} calls, got {len(self.calls_to(method))}")

    def _answer(self, method: str, args: dict[str, Any], headers: dict[str, str],
                client_port: int = 0) -> Scripted:
        call = Call(method, args, headers, time.time(), client_port)
        if self._on_call is not None:
            self._on_call(call)
        with self._lock:
            self.calls.append(call)
            queued = self._script.get(method)
            if queued:
                return queued.pop(0)
            self._ts += 1
            if method == "oauth.v2.access":
                return self._oauth(args, headers)
        if method == "chat.postMessage":
            return Scripted(200, {"ok": True, "channel": args.get("channel"),
                                  "ts": f"{self._ts}.000100",
                                  "message": {"text": args.get("text")}})
        if method == "auth.test":
            return Scripted(200, {"ok": True, "team_id": "T000FAKE", "user_id": "U000BOT"})
        return Scripted()

    def _oauth(self, args: dict[str, Any], headers: dict[str, str]) -> Scripted:
        """`oauth.v2.access` (under the lock): exchange a code or a refresh token, once."""
        if self.client_id is not None and _credentials(args, headers) != (
                self.client_id, self.client_secret):
            return slack_error("invalid_client_id")
        if args.get("grant_type") == "refresh_token":
            token = str(args.get("refresh_token", ""))
            if token in self._spent:
                self.reused_refresh_tokens.append(token)
                return slack_error("invalid_refresh_token")
            grant = self._refresh.pop(token, None)
            if grant is None:
                return slack_error("invalid_refresh_token")
            self._spent.add(token)
            return Scripted(200, self._tokens(grant, self.refresh_expires_in))
        grant = self._codes.pop(str(args.get("code", "")), None)
        if grant is None:
            return slack_error("invalid_code")
        answer = self._tokens(grant, grant.expires_in)
        answer.update({
            "app_id": grant.app_id, "bot_user_id": "U0BOT", "is_enterprise_install":
            grant.is_enterprise_install, "authed_user": {"id": grant.installer},
            "team": None if grant.is_enterprise_install else {"id": grant.team_id,
                                                              "name": f"Team {grant.team_id}"},
            "enterprise": ({"id": grant.enterprise_id, "name": f"Org {grant.enterprise_id}"}
                           if grant.enterprise_id else None),
        })
        if grant.user_scope:
            answer["authed_user"].update({"scope": grant.user_scope, "token_type": "user",
                                          "access_token": f"xoxp-{next(self._serial)}-user"})
        return Scripted(200, answer)

    def _tokens(self, grant: Grant, expires_in: int | None) -> dict[str, Any]:
        owner = grant.team_id if not grant.is_enterprise_install else grant.enterprise_id
        serial = next(self._serial)
        answer: dict[str, Any] = {"ok": True, "token_type": "bot", "scope": grant.scope,
                                  "app_id": grant.app_id, "bot_user_id": "U0BOT"}
        if expires_in is None:
            answer["access_token"] = f"xoxb-{owner}-{serial}-not-real"
        else:
            refresh = f"xoxe-1-refresh-{serial}"
            self._refresh[refresh] = grant
            answer.update({"access_token": f"xoxe.xoxb-1-{owner}-{serial}-not-real",
                           "refresh_token": refresh, "expires_in": expires_in})
        self.issued_tokens.append(answer["access_token"])
        return answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if fake._keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                ctype = self.headers.get("Content-Type", "")
                args = json.loads(raw or "{}") if "json" in ctype else dict(parse_qsl(raw))
                method = self.path.rsplit("/", 1)[-1]
                answer = fake._answer(method, args, dict(self.headers), self.client_address[1])
                if method == "oauth.v2.access" and fake.oauth_delay:
                    time.sleep(fake.oauth_delay)  # this request's thread only
                body = json.dumps(answer.body).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # http.server's naming
                url = urlsplit(self.path)
                target = (fake.approve(dict(parse_qsl(url.query)))
                          if url.path == "/oauth/v2/authorize" else None)
                if target is None:
                    self.send_response(404 if url.path != "/oauth/v2/authorize" else 400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler


def _credentials(args: dict[str, Any], headers: dict[str, str]) -> tuple[Any, Any]:
    """The client id and secret of an `oauth.v2.access` call: Basic header, else form fields."""
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    if auth.startswith("Basic "):
        client_id, _, secret = base64.b64decode(auth[len("Basic "):]).decode().partition(":")
        return client_id, secret
    return args.get("client_id"), args.get("client_secret")


def describe(call: Call, limit: int = 120) -> str:
    """One printable line for a call: the method, channel and text, bounded; never a header
    (the Authorization header holds the bot token)."""
    text = str(call.args.get("text", ""))
    shown = text if len(text) <= limit else text[:limit] + "..."
    fields = [call.method, f"channel={call.args.get('channel', '-')}", f"text={shown!r}"]
    if call.args.get("thread_ts"):
        fields.append(f"thread_ts={call.args['thread_ts']}")
    return " ".join(fields).encode("unicode_escape").decode("ascii")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted, printing one line per Web API call received."""
    parser = argparse.ArgumentParser(prog="python -m harness.slack_standin",
                                     description="A loopback stand-in for Slack's Web API.")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    fake = FakeSlack(args.port, on_call=lambda call: print(describe(call), flush=True))
    print(f"Slack stand-in on {fake.base_url} (set SLACK_API_URL to it; for installs, "
          f"SLACK_AUTHORIZE_URL={fake.authorize_url} and SLACK_REDIRECT_URI); Ctrl-C stops",
          flush=True)
    fake.start()
    try:
        fake.join()
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
