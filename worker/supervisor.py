"""The worker dyno's supervisor: `WORKER_PROCESSES` worker processes, so a dyno uses its cores.

One worker process runs on one event loop, hence on one core at most. The supervisor starts the
children (`python -m worker` with `WORKER_PROCESSES=1`), forwards SIGTERM/SIGINT to them, restarts
a child that dies on its own or cannot be started (backing off when it keeps failing quickly), and
exits once every child has stopped. A child that exits with the configuration error code is not
restarted: the whole supervisor stops with that code, since every restart would fail the same way.

After a stop the supervisor waits for the children as long as they wait for their own jobs
(`WORKER_GRACE_SECONDS`) plus `STOP_MARGIN_SECONDS`, then SIGKILLs whatever is left.

It imports neither bullmq nor redis, so it costs little memory next to its children.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from slackq.settings import Settings

log = structlog.get_logger(__name__)

CONFIG_EXIT_CODE = 2
# What a slot reports when its child could not be started at all (a shell's "command not found"):
# not a clean exit.
SPAWN_FAILED_CODE = 127
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Added to the children's grace before the supervisor SIGKILLs them. Past its grace a child still
# force-closes its jobs, closes its Redis connections and exits, which takes well under a second
# on a reachable Redis; 5 s also covers a slow host. Not a setting: the operator's knob is
# WORKER_GRACE_SECONDS, and with its default (25 s) the supervisor gives up at 30 s, when Heroku
# SIGKILLs the dyno anyway.
STOP_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class RestartPolicy:
    """How long to wait before restarting a child that died, by how often it died quickly.

    A child counts as stable, and the backoff starts over, once it has run for `cap_seconds`:
    a crash loop that slow already restarts no faster than the longest wait, so a separate
    threshold would be one more knob with nothing to tune.
    """

    base_seconds: float
    cap_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        """`WORKER_RESTART_DELAY_SECONDS` and `WORKER_RESTART_MAX_DELAY_SECONDS`."""
        return cls(settings.worker_restart_delay_seconds, settings.worker_restart_max_delay_seconds)

    @property
    def stable_seconds(self) -> float:
        return self.cap_seconds

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
    """Keeps `count` children of `command` alive until told to stop.

    `child_grace_seconds` is how long each child waits for its in-flight jobs once signalled;
    the supervisor waits that long plus `STOP_MARGIN_SECONDS` before it SIGKILLs them.
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        env: Mapping[str, str],
        *,
        child_grace_seconds: float,
        policy: RestartPolicy,
    ) -> None:
        self.command = list(command)
        self.count = count
        self.env = dict(env)
        self.stop_timeout = child_grace_seconds + STOP_MARGIN_SECONDS
        self.policy = policy
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
        done, pending = await asyncio.wait(slots, timeout=self.stop_timeout)
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
            code = await self._run_child(index)
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

    async def _run_child(self, index: int) -> int:
        """Start child `index` and wait for it; `SPAWN_FAILED_CODE` if it could not start.

        Starting fails with an OSError (no such file, EAGAIN at the process limit, ENOMEM);
        the caller backs off and tries again, as for a child that died.
        """
        try:
            process = await asyncio.create_subprocess_exec(*self.command, env=self.env)
        except OSError as exc:
            log.error("worker_process_spawn_failed", index=index, command=self.command[0],
                      error=f"{type(exc).__name__}: {exc}")
            return SPAWN_FAILED_CODE
        self.children[index] = process
        log.info("worker_process_started", index=index, pid=process.pid)
        if self.stop.is_set():
            self._signal(process, self.stop_signal)
        code = await process.wait()
        log.info("worker_process_exited", index=index, pid=process.pid, returncode=code)
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


async def _supervise(supervisor: Supervisor) -> int:
    loop = asyncio.get_running_loop()
    for signum in FORWARDED_SIGNALS:
        loop.add_signal_handler(signum, supervisor.request_stop, signum)
    return await supervisor.run()


def supervise(settings: Settings, command: Sequence[str] | None = None) -> int:
    """Run `WORKER_PROCESSES` worker processes (each with `WORKER_PROCESSES=1`) until a signal."""
    with tempfile.TemporaryDirectory(prefix="slackq-dyno-") as directory:
        # The children's fetch turn (worker/fetch_turn.py): one lock file per dyno.
        env = {**os.environ, "WORKER_PROCESSES": "1",
               "WORKER_FETCH_TURN_FILE": str(Path(directory) / "fetch-turn.lock")}
        supervisor = Supervisor(
            command or child_command(), settings.worker_processes, env,
            child_grace_seconds=settings.worker_grace_seconds,
            policy=RestartPolicy.from_settings(settings),
        )
        return asyncio.run(_supervise(supervisor))
