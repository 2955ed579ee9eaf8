"""Who may see and act on the dashboard: Basic auth, CSRF tokens, and the security headers.

* Logins: `ADMIN_USER` / `ADMIN_PASSWORD` may act; `readonly` / `ADMIN_READONLY_PASSWORD` may only
  look. Credentials are compared in constant time, against every login (no early exit).
* CSRF: browsers send Basic credentials to a site on every request, including one forged from
  another site's form, so every POST carries a token: `<unix time>.<HMAC(user|time)>`, keyed by
  a key derived from the admin password (every web process agrees; changing the password voids
  old tokens), valid for `CSRF_MAX_AGE_SECONDS`. Cross-site requests are refused outright too.
* Headers: a strict Content-Security-Policy (only the package's own script and stylesheet; no
  inline script, no inline style), no framing, no sniffing, no caching.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Role = Literal["admin", "readonly"]
READONLY_USER = "readonly"
CSRF_MAX_AGE_SECONDS = 8 * 3600
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
LOOPBACK = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True)
class Login:
    user: str
    role: Role


class BasicAuth:
    """ASGI middleware: 401 unless the request's Basic credentials match a login.

    Sets `request.state.login`. With `trust_loopback` (only `slackq dashboard`, bound to
    127.0.0.1) a request from the loopback interface is let in as the admin without credentials.
    """

    def __init__(self, app: ASGIApp, logins: Mapping[str, tuple[str, Role]],
                 trust_loopback: bool = False) -> None:
        self.app = app
        self.logins = {user.encode(): (password.encode(), role)
                       for user, (password, role) in logins.items()}
        self.trust_loopback = trust_loopback

    def check(self, header: str) -> Login | None:
        """The login whose credentials `header` (an Authorization value) carries, if any."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        found = None
        for known, (known_password, role) in self.logins.items():
            # `&`, not `and`: both comparisons always run, whatever the user name.
            if (secrets.compare_digest(user, known)
                    & secrets.compare_digest(password, known_password) & bool(sep)):
                found = Login(known.decode(), role)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        login = self.check(headers.get("authorization", ""))
        if login is None and self.trust_loopback and _loopback(scope, headers):
            login = Login("local", "admin")
        if login is None:
            response = PlainTextResponse("authentication required", 401, headers={
                "WWW-Authenticate": 'Basic realm="slackq admin", charset="UTF-8"'})
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["login"] = login
        await self.app(scope, receive, send)


def _loopback(scope: Scope, headers: Headers) -> bool:
    """A request from this machine that names this machine: the Host check stops a web page
    whose domain was rebound to 127.0.0.1 from reading the pages."""
    client: tuple[str, int] | None = scope.get("client")
    host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
    return client is not None and client[0] in LOOPBACK and host in {"127.0.0.1", "localhost",
                                                                      "::1"}


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every response (401s included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Csrf:
    """Stateless CSRF tokens bound to the login's user name."""

    def __init__(self, secret: str, max_age: int = CSRF_MAX_AGE_SECONDS) -> None:
        self.key = hmac.new(secret.encode(), b"slackq-dashboard-csrf", hashlib.sha256).digest()
        self.max_age = max_age

    def _mac(self, user: str, issued: str) -> str:
        return hmac.new(self.key, f"{user}|{issued}".encode(), hashlib.sha256).hexdigest()

    def issue(self, user: str, now: float | None = None) -> str:
        issued = str(int(time.time() if now is None else now))
        return f"{issued}.{self._mac(user, issued)}"

    def valid(self, user: str, token: str, now: float | None = None) -> bool:
        issued, _, mac = token.partition(".")
        if not issued.isdigit():
            return False
        age = (time.time() if now is None else now) - int(issued)
        if not 0 <= age <= self.max_age:
            return False
        return hmac.compare_digest(mac, self._mac(user, issued))


def same_origin(headers: Headers) -> bool:
    """False for a request a browser marks as cross-site (defence in depth next to the token)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in {"same-origin", "none"}:
        return False
    origin = headers.get("origin")
    host = headers.get("host")
    if origin is not None and origin != "null" and host is not None:
        return origin.split("://", 1)[-1] == host
    return origin != "null"
