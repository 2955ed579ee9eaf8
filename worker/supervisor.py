"""The worker dyno's supervisor: `WORKER_PROCESSES` worker processes, so a dyno uses its cores.

One worker process runs on one event loop, hence on one core at most. The supervisor starts the
children (`python -m worker` with `WORKER_PROCESSES=1`), forwards SIGTERM/SIGINT to them, restarts
a child that dies on its own (backing off when it keeps dying quickly), and exits once every child
has stopped. A child that exits with the configuration error code is not restarted: the whole
supervisor stops with that code, since every restart would fail the same way.

It imports neither bullmq nor redis, so it costs little memory next to its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

CONFIG_EXIT_CODE = 2
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before restarting a child that died, by how often it died quickly."""

    base_seconds: float = 0.5
    cap_seconds: float = 30.0
    # A child that ran at least this long before dying starts the backoff over.
    stable_seconds: float = 30.0

    def delay(self, quick_failures: int) -> float:
        """Seconds before the next start, after `quick_failures` consecutive quick deaths."""
        return float(min(self.cap_seconds, self.base_seconds * 2 ** max(0, quick_failures)))


def clean_exit(returncode: int) -> bool:
    """Did a child stop the way a forwarded signal asks it to (exit 0, or killed by it)?"""
    return returncode == 0 or -returncode in FORWARDED_SIGNALS


def child_command() -> list[str]:
    """The command of one worker process: this interpreter, `-m worker`."""
    return [sys.executable, "-m", "worker"]


class Supervisor:
    """Keeps `count` children of `command` alive until told to stop."""

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        env: Mapping[str, str],
        *,
        grace_seconds: float = 30.0,
        policy: RestartPolicy | None = None,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.env = dict(env)
        self.grace_seconds = grace_seconds
        self.policy = policy or RestartPolicy()
        self.stop = asyncio.Event()
        self.stop_signal = signal.SIGTERM
        self.fatal_code: int | None = None
        self.children: dict[int, asyncio.subprocess.Process] = {}

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop: forward `signum` to every live child (also what the signal handlers call)."""
        if not self.stop.is_set():
            self.stop_signal = signal.Signals(signum)
            log.info("supervisor_stopping", signal=self.stop_signal.name)
            self.stop.set()
        self._forward(self.stop_signal)

    async def run(self) -> int:
        """Run the children until a stop; return the exit code for the supervisor process."""
        log.info("supervisor_started", processes=self.count, pid=os.getpid())
        slots = [asyncio.create_task(self._keep_alive(i), name=f"worker-{i}")
                 for i in range(self.count)]
        await self.stop.wait()
        done, pending = await asyncio.wait(slots, timeout=self.grace_seconds)
        if pending:
            log.warning("supervisor_killing", pids=self._live_pids())
            self._forward(signal.SIGKILL)
            done_late, _ = await asyncio.wait(pending)
            done |= done_late
        codes = [task.result() for task in done]
        exit_code = self._exit_code(codes)
        log.info("supervisor_stopped", exit_code=exit_code, child_codes=sorted(codes))
        return exit_code

    def _exit_code(self, codes: list[int]) -> int:
        if self.fatal_code is not None:
            return self.fatal_code
        return 0 if all(clean_exit(code) for code in codes) else 1

    async def _keep_alive(self, index: int) -> int:
        """Start child `index` and restart it until the supervisor stops; return its last code."""
        quick_failures = 0
        while True:
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(*self.command, env=self.env)
            self.children[index] = process
            log.info("worker_process_started", index=index, pid=process.pid)
            if self.stop.is_set():
                self._signal(process, self.stop_signal)
            code = await process.wait()
            log.info("worker_process_exited", index=index, pid=process.pid, returncode=code)
            if self.stop.is_set():
                return code
            if code == CONFIG_EXIT_CODE:
                self.fatal_code = code
                self.request_stop(signal.SIGTERM)
                return code
            ran = time.monotonic() - started
            quick_failures = quick_failures + 1 if ran < self.policy.stable_seconds else 0
            delay = self.policy.delay(quick_failures - 1)
            log.warning("worker_process_restarting", index=index, returncode=code,
                        ran_seconds=round(ran, 3), delay_seconds=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                return code

    def _forward(self, signum: int) -> None:
        for process in self.children.values():
            self._signal(process, signum)

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, signum: int) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def _live_pids(self) -> list[int]:
        return [p.pid for p in self.children.values() if p.returncode is None]


async def _supervise(count: int, env: Mapping[str, str], command: Sequence[str]) -> int:
    supervisor = Supervisor(command, count, env)
    loop = asyncio.get_running_loop()
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, supervisor.request_stop, signum)
    return await supervisor.run()


def supervise(count: int, command: Sequence[str] | None = None) -> int:
    """Run `count` worker processes (each with `WORKER_PROCESSES=1`) until SIGTERM/SIGINT."""
    env = {**os.environ, "WORKER_PROCESSES": "1"}
    return asyncio.run(_supervise(count, env, command or child_command()))
