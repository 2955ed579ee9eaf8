"""`python -m worker`: the Procfile's `worker` line.

With `WORKER_PROCESSES` > 1 (default: the usable CPU count) this process is the supervisor of
that many worker processes (worker/supervisor.py); with 1 it is a worker process itself.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from slackq.errors import ConfigError, RedisMisconfigured, StoreError
from slackq.logging import configure_logging
from slackq.settings import Settings, load_settings

if TYPE_CHECKING:
    from worker.registry import HandlerRegistry


def main() -> int:
    try:
        settings = load_settings(workspace=True)
        if settings.workspace_mode() == "multi":  # the database and the token key
            from slackq.preflight import check_store_sync

            check_store_sync(settings)
    except (ConfigError, StoreError) as exc:
        print(f"slackq worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    return run_dyno(settings, _default_registry)


def _default_registry() -> HandlerRegistry:
    # Imported here so that the supervisor process never loads bullmq and redis.
    from worker.handlers import default_registry

    return default_registry()


def run_dyno(settings: Settings, registry: Callable[[], HandlerRegistry],
             command: Sequence[str] | None = None) -> int:
    """The dyno; the process exit code.

    With `WORKER_PROCESSES` > 1 a supervisor of that many `command` processes (default
    `python -m worker`), else one worker process with `registry()`.
    """
    if settings.worker_processes > 1:
        from worker.metrics import serve_supervisor_metrics
        from worker.supervisor import supervise

        serve_supervisor_metrics(settings)  # METRICS_PORT: the sum of all worker processes
        return supervise(settings, command)
    return run_process(settings, registry())


def run_process(settings: Settings, registry: HandlerRegistry) -> int:
    """One worker process with `registry` until SIGTERM/SIGINT; the process exit code."""
    import uvloop

    from slackq.preflight import check_credentials
    from worker.runner import WorkerOptions, run_worker

    options = WorkerOptions.from_settings(settings)
    try:
        asyncio.run(check_credentials(settings.redis_url))  # wrong password/TLS: one line, exit 2
        # uvloop, as uvicorn uses for the web process: ~5-10% less CPU per job at a trickle
        # (bench/README.md), where each job costs four Redis round trips.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run_worker(settings, registry, options))
    except RedisMisconfigured as exc:
        print(f"slackq worker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
