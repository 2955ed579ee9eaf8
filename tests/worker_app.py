"""`python -m tests.worker_app`: the worker dyno with extra test handlers, as a real process.

It runs exactly what `python -m worker` runs (`worker.__main__.run_dyno`: with
`WORKER_PROCESSES` > 1 the supervisor, here of `python -m tests.worker_app` children; signals,
shutdown, settings from the environment); the only difference is the registry:

* `held_mention`: replies like `app_mention` (a recorded Slack effect), then holds the job for
  `TEST_HOLD_SECONDS` (environment, default 0; a message text `hold=<seconds>` overrides it) so a
  test can signal or kill the process mid-job. Its log lines name the process (`pid`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from slackq.errors import ConfigError, StoreError
from slackq.logging import configure_logging
from slackq.preflight import check_store_sync
from slackq.settings import load_settings
from worker.__main__ import run_dyno
from worker.handlers import default_registry, reply_to_mention
from worker.registry import HandlerRegistry, JobContext


async def held_mention(ctx: JobContext) -> dict[str, Any]:
    result = await reply_to_mention(ctx)
    text = str(ctx.event.get("text", ""))
    hold = float(text.split("hold=", 1)[1].split()[0] if "hold=" in text
                 else os.environ.get("TEST_HOLD_SECONDS", "0"))
    ctx.log.info("test_hold_started", hold_seconds=hold, pid=os.getpid())
    await asyncio.sleep(hold)
    ctx.log.info("test_hold_finished")
    return result


def app_registry() -> HandlerRegistry:
    registry = default_registry()
    registry.register("held_mention")(held_mention)
    return registry


def main() -> int:
    try:
        settings = load_settings(workspace=True)
        check_store_sync(settings)
    except (ConfigError, StoreError) as exc:
        print(f"slackq test worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    return run_dyno(settings, app_registry, [sys.executable, "-m", "tests.worker_app"])


if __name__ == "__main__":
    sys.exit(main())
