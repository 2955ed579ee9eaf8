"""`python -m producers`: the web process (uvicorn on $PORT, proxy headers on)."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from producers.ack import require_ack_support
from producers.app import create_app
from producers.http_protocol import header_deadline_protocol
from slackq.errors import ConfigError, RedisMisconfigured, StoreError
from slackq.logging import configure_logging
from slackq.preflight import check_credentials, check_store_sync
from slackq.settings import load_settings


def main() -> int:
    try:
        settings = load_settings(require=("SLACK_SIGNING_SECRET",))
        check_store_sync(settings)  # multi-workspace mode: the database and the token key
    except (ConfigError, StoreError) as exc:
        print(f"slackq web: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(check_credentials(settings.redis_url))  # wrong password/TLS: one line, exit 2
        asyncio.run(require_ack_support(settings))  # ACK_DURABILITY=fsync on Redis < 7.2
    except RedisMisconfigured as exc:
        print(f"slackq web: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host="0.0.0.0",  # a dyno must listen on all interfaces
        port=settings.port,
        proxy_headers=True,
        forwarded_allow_ips="*",
        log_config=None,
        access_log=False,
        limit_concurrency=settings.web_max_concurrency,
        http=header_deadline_protocol(settings.web_header_timeout_seconds),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
