"""`python -m dashboard [--port 8025]`: the dashboard alone, on 127.0.0.1, for a laptop pointed at
`REDIS_URL` (`slackq dashboard` runs this).

Bound to the loopback interface only, it asks for no login from this machine (and says so on
every page); actions still need the page's CSRF token.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from dashboard.app import Dashboard
from slackq.errors import ConfigError
from slackq.logging import configure_logging
from slackq.preflight import redis_location
from slackq.settings import Settings, load_settings

HOST = "127.0.0.1"


def local_app(settings: Settings) -> tuple[Starlette, Dashboard]:
    """The dashboard under /admin (as in the web process), `/` redirecting to it."""
    dashboard = Dashboard(settings, logins={}, csrf_secret=secrets.token_hex(32),
                          trust_loopback=True)

    async def home(request: Request) -> Response:
        return RedirectResponse(request.url_for("admin:overview"))

    app = Starlette(routes=[Route("/", home), dashboard.mount()])
    return app, dashboard


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slackq dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8025)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"slackq dashboard: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    app, _ = local_app(settings)
    print(f"slackq dashboard: http://{HOST}:{args.port}/admin/ for "
          f"{redis_location(settings.redis_url)}; no login asked on this machine's loopback "
          "interface (not reachable from others)", file=sys.stderr)
    uvicorn.run(app, host=HOST, port=args.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
