"""A Python worker for the benchmarks, with a no-op processor.

    python bench/py_worker.py port   QUEUE CONCURRENCY REDIS_URL   the BullMQ port as it ships
    python bench/py_worker.py slackq                               one slackq worker process
    python bench/py_worker.py dyno                                 the slackq worker dyno

`slackq` and `dyno` read the same environment as `python -m worker` (QUEUE_NAME, REDIS_URL,
WORKER_CONCURRENCY, WORKER_PROCESSES) and run the same code; only the handler registry differs:
it has a no-op handler for the benchmark's job name.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Only what the supervisor needs is imported here (like `python -m worker`, it stays small).
from slackq.logging import configure_logging
from slackq.settings import load_settings

JOB_NAME = "bench_noop"  # bench.common.JOB_NAME, without importing bullmq into the supervisor


async def noop_processor(_job: Any, _token: str) -> None:
    return None


async def run_port(queue: str, concurrency: int, url: str) -> None:
    """The port's Worker with its defaults (one connection + one blocking connection)."""
    from bullmq import Worker

    from slackq.bullmq_seam import load_server_capabilities
    from slackq.connection import bullmq_connection

    worker = Worker(queue, noop_processor, {"connection": bullmq_connection(url),
                                            "concurrency": concurrency, "autorun": False})
    await load_server_capabilities(worker)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    task = asyncio.create_task(worker.run())
    print("worker_started", flush=True)
    await stop.wait()
    await worker.close()
    await asyncio.gather(task, return_exceptions=True)


def noop_registry() -> Any:
    from worker.registry import HandlerRegistry, JobContext

    registry = HandlerRegistry()

    @registry.register(JOB_NAME)
    async def noop(_ctx: JobContext) -> Any:
        return None

    return registry


def main(argv: list[str]) -> int:
    impl = argv[0]
    if impl == "port":
        asyncio.run(run_port(argv[1], int(argv[2]), argv[3]))
        return 0
    settings = load_settings(require=("SLACK_BOT_TOKEN",))
    configure_logging(settings.log_format, settings.log_level)
    if impl == "dyno" and settings.worker_processes > 1:
        from worker.supervisor import supervise

        return supervise(settings, [sys.executable, __file__, "slackq"])
    from worker.__main__ import run_process

    return run_process(settings, noop_registry())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
