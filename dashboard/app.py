"""The dashboard's ASGI app: its own small Redis pool, routes, templates and middleware.

`Dashboard.for_settings(settings)` is None unless `ADMIN_PASSWORD` is set: then the web process
does not mount it at all and `/admin` is a plain 404. The app must be mounted as
`Mount("/admin", app=dashboard.app, name="admin")` (templates build links with `admin:*` route
names). A mounted app's lifespan never runs, so whoever mounts it calls `close()` on shutdown.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from bullmq import Queue
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from dashboard import views
from dashboard.actions import Actions
from dashboard.queries import Reader
from dashboard.security import READONLY_USER, BasicAuth, Csrf, Role, SecurityHeaders
from slackq.connection import DASHBOARD, redis_client
from slackq.errors import ConfigError
from slackq.job_index import JobIndex, retention_seconds
from slackq.settings import Settings


def templates() -> Jinja2Templates:
    """Jinja2 with autoescape on for every template, whatever its file name."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("dashboard", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["when"] = _when
    return Jinja2Templates(env=env)


def _when(ms: Any) -> str:
    """A millisecond timestamp as UTC text (empty for none)."""
    if not ms:
        return ""
    moment = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


class Dashboard:
    """The app and what it holds open."""

    def __init__(self, settings: Settings, logins: dict[str, tuple[str, Role]],
                 csrf_secret: str, trust_loopback: bool = False) -> None:
        self.settings = settings
        # Its own few connections: a slow page never takes the webhook's (slackq.connection).
        self.client = redis_client(settings.redis_url, DASHBOARD)
        queue = Queue(settings.queue_name,
                      {"connection": self.client, "prefix": settings.queue_prefix})
        index = JobIndex(self.client, settings.queue_prefix, settings.queue_name,
                         retention_seconds(settings.job_keep_completed_seconds,
                                           settings.job_keep_failed_seconds))
        self.reader = Reader(self.client, queue, index, settings.queue_prefix,
                             settings.queue_name)
        self.actions = Actions(self.reader)
        self.csrf = Csrf(csrf_secret)
        self.templates = templates()
        self.trust_loopback = trust_loopback
        static = StaticFiles(packages=[("dashboard", "static")])
        self.app = Starlette(routes=[
            *views.routes(), Mount("/static", app=static, name="static"),
        ], exception_handlers={
            RedisError: views.redis_unavailable, OSError: views.redis_unavailable,
            TimeoutError: views.redis_unavailable,
        }, middleware=[
            Middleware(SecurityHeaders),
            Middleware(BasicAuth, logins=logins, trust_loopback=trust_loopback),
        ])
        self.app.state.dashboard = self

    @classmethod
    def for_settings(cls, settings: Settings) -> Dashboard | None:
        """The dashboard of the web process, or None when `ADMIN_PASSWORD` is not set."""
        password = settings.admin_password.get_secret_value() if settings.admin_password else ""
        if not password:
            return None
        if settings.admin_user == READONLY_USER:
            raise ConfigError(f"ADMIN_USER must not be {READONLY_USER!r}: that is the read-only "
                              "login's name")
        logins: dict[str, tuple[str, Role]] = {settings.admin_user: (password, "admin")}
        readonly = settings.admin_readonly_password
        if readonly and readonly.get_secret_value():
            logins[READONLY_USER] = (readonly.get_secret_value(), "readonly")
        return cls(settings, logins, csrf_secret=password)

    def mount(self) -> Mount:
        return Mount("/admin", app=self.app, name="admin")

    async def close(self) -> None:
        await self.reader.queue.close()
        await self.client.aclose()
