"""`python -m producers`: the web process (uvicorn on $PORT, proxy headers on)."""

from __future__ import annotations

import asyncio
import gc
import sys

from producers.ack import require_ack_support
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
    # The app and uvicorn (~1 s of imports) once the checks above passed: a start that stops
    # on its configuration or its Redis stops at once.
    import uvicorn

    from producers.app import create_app
    from producers.http_protocol import header_deadline_protocol

    app = create_app(settings)
    settle_garbage_collector()
    uvicorn.run(
        app,
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


# Net allocations between two collections of the youngest generation (CPython's default: 700).
# A request's objects live for milliseconds: whatever the threshold, a collection finds about
# the objects of the requests in flight, so collecting less often does less work in all.
GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Keep the garbage collector off what the process built at start-up (modules, the app):
    ~117,000 objects, which every full collection walked (25-40 ms of CPU each, a pause for
    every request in flight), and which gc.freeze() moves out of its way for good; then collect
    the young generation less often. Measured with `gc.callbacks` over 10,000 requests at
    500/s: the collector's CPU ~4.5 -> ~1 us a request."""
    gc.collect()  # start-up garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


if __name__ == "__main__":
    sys.exit(main())
