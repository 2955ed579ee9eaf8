"""`python -m worker`: one worker process (the Procfile's `worker` line)."""

from __future__ import annotations

import asyncio
import sys

from slackq.errors import ConfigError, RedisMisconfigured
from slackq.logging import configure_logging
from slackq.preflight import check_credentials
from slackq.settings import load_settings
from worker.handlers import default_registry
from worker.runner import WorkerOptions, run_worker


def main() -> int:
    try:
        settings = load_settings(require=("SLACK_BOT_TOKEN",))
    except ConfigError as exc:
        print(f"slackq worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    options = WorkerOptions.from_settings(settings)
    try:
        asyncio.run(check_credentials(settings.redis_url))  # wrong password/TLS: one line, exit 2
        asyncio.run(run_worker(settings, default_registry(), options))
    except RedisMisconfigured as exc:
        print(f"slackq worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
