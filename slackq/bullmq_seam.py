"""Every use of the BullMQ port's non-public API, in one module (the port is pinned: 3.4.4).

slackq uses the port's public API everywhere else: what Node BullMQ documents and the port mirrors
(`Queue(...)` with `add`, `addBulk`, `getJobs`, `getJobCounts`, `getJobLogs`, `retryJobs`,
`clean`, `get_workers`, `close`; `Worker(...)` with its documented options (`name`, `metrics`
among them), `run`, `close`, `on`; `Job(...)`, its fields such as `id`, `name`, `data`, `opts`
(read only), `timestamp`, `processedOn`, `attemptsMade`, `attemptsStarted`, `stalledCounter`,
`stacktrace`, `finishedOn`, and `moveToDelayed`, `retry`; `DelayedError`,
`UnrecoverableError`). What is not public is here:

* `FetchNextWorker`: a Worker subclass overriding `run`, `getNextJob` and `processJob`, replacing
  its backend's `moveToCompleted` on the instance, calling `nextJobFromJobData`, `emit`,
  `retryIfFailed`, `_ensure_client_names`, `lockManager.start`, `runStalledJobsCheck` with the
  port's `Timer`, reading `closing`, `paused`, `closed`, `running`, `waiting`, `resume_event`
  and `id`, and setting `processing` (the tasks `pause()`, `close()` and `cancelProcessing()`
  wait for or cancel) and `stalledCheckTimer`, as the port's `Worker.run` does.
* `set_worker_retry`: the retry of the clients a Worker builds itself (`redisConnection.conn`,
  `blockingRedisConnection.conn`). Clients slackq builds get theirs from `slackq.connection`.
* `renew_locks_until_jobs_end`: the close of a Worker's `lockManager`, replaced on the instance
  to wait for its `processing` tasks unless `forceClosing`.
* `load_server_capabilities`: `RedisConnection.getRedisVersion` before `Worker.run()`.
* `complete_with`: the completion of `FetchNextWorker` and the port's `Worker` alike, replacing
  the backend's `moveToCompleted` on the instance: the port's `moveToFinished` script (its SHA
  and Lua text from `Worker.scripts.commands`, its keys and arguments from
  `Scripts.moveToCompletedArgs`), its reply read as `Scripts.moveToFinished` reads it
  (`raw2NextJobData`, `Scripts.finishedErrors`), sent through `Worker.redisConnection.conn`.
* `in_flight_jobs`: `Worker.jobs`.
* `set_retry_delay`: the in-memory `job.opts["backoff"]` that `Job.moveToFailed` reads.
* `standard_add_calls`, `queue_client`: the `addStandardJob` script's SHA, keys and arguments
  (`Queue.scripts`), and `Queue.client`, for `producers/batching.py`'s pipelined adds.
* `route_port_tracebacks`: the `traceback` module global of the port's modules that call
  `traceback.print_exc()` (`PRINTING_MODULES`), replaced so that it logs instead.

tests/test_bullmq_seam.py checks the installed port's version against pyproject.toml and each
signature, attribute and script this module relies on; a failure names the function here that
would break. The same test scans slackq/, producers/, worker/, harness/ and bench/ for any other
use of the port's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import traceback
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from bullmq import Job, Queue, Worker
from bullmq.scripts import raw2NextJobData
from bullmq.timer import Timer
from redis.asyncio.retry import Retry
from redis.exceptions import NoScriptError

from slackq.pool import LeanRedis

PORT_VERSION = "3.4.4"  # pyproject.toml pins the same; the seam test compares all three

# addStandardJob-9.lua's KEYS, in the order of the port's `Scripts.addStandardJob`.
STANDARD_JOB_KEYS = ("wait", "paused", "meta", "id", "completed", "delayed", "active", "events",
                     "marker")


class FetchTurnLike(Protocol):
    """A turn to wait for new jobs shared by the processes of a dyno (`worker.fetch_turn`)."""

    async def acquire(self) -> bool:
        """Take the turn; False when `interrupt` ended the wait first."""

    def release(self) -> None:
        """Give the turn up (nothing when not held)."""

    def interrupt(self) -> None:
        """Give the turn up and end a pending `acquire`."""


class FetchNextWorker(Worker):  # type: ignore[misc]  # bullmq ships no type information
    """A port `Worker` that fetches as Node's Worker does: the next job with each completion,
    and one fetch at a time.

    The port (3.4.4) is ~8x slower than Node BullMQ at draining a queue; three of the reasons:

    1. After a job completes it calls `moveToFinished` with `fetchNext=0` and then a separate
       `moveToActive` for the next job: two script round trips per job where Node makes one.
       When the queue is nearly empty, the extra `moveToActive` calls are empty polls that burn
       CPU. This class passes `fetchNext=1` to the very same `moveToFinished` script (as Node
       does, unless the worker is closing or paused) and processes the job it returns in the
       same task.
    2. Its run loop starts up to `concurrency` fetches at once whenever a job arrives, and each
       calls `moveToActive` until one of them finds the queue empty: at a steady trickle of jobs
       that is up to `concurrency` script calls per job, nearly all empty. This class fetches
       in turn, as Node's main loop does (it awaits each fetch before starting the next).
    3. Its run loop makes a task for every fetch and every job, and waits on all of them
       (`asyncio.wait` over up to `concurrency` tasks) each time one ends. This class runs
       `concurrency` long-lived slots instead, each fetching (in turn) and processing: at 500
       jobs/s ~15 % less CPU per job (bench/README.md, issue 18 fourth pass).

    (The fourth, a pooled connection instead of the port's single one, is `worker/pool.py`.)
    Upstream-worthy: all three belong in the port itself (fetch-next in `Worker.processJob`,
    fetches in turn and slots in `Worker.run`).
    """

    # Awaited before each fetch: slackq's backoff while Redis fails (worker/outage.py).
    before_fetch: Callable[[], Awaitable[None]] | None = None
    # Taken before a fetch waits for new jobs, kept while this process has a free slot, given
    # up when the job just fetched fills the last one, or on close/pause: worker/fetch_turn.py.
    fetch_turn: FetchTurnLike | None = None
    running: bool  # set by the port's __init__

    def __init__(self, name: str, processor: Any, opts: dict[str, Any]) -> None:
        super().__init__(name, processor, opts)
        self._fetched: dict[str, Any] = {}
        self._fetching = asyncio.Lock()
        self._running = 0  # processJob calls in progress: the slots that are busy
        self._token_postfix = 0
        move_to_completed = self.backend.moveToCompleted

        async def move_to_completed_fetching_next(
            job: Job, return_value: Any, remove_on_complete: Any, token: str,
            fetch_next: bool = False,
        ) -> Any:
            fetch = not (self.closing or self.paused)
            finished = await move_to_completed(job, return_value, remove_on_complete, token,
                                               fetch_next=fetch)
            if fetch:
                self._fetched[token] = finished.get("result")
            return finished

        # The port calls `backend.moveToCompleted(..., fetch_next=False)` from processJob.
        self.backend.moveToCompleted = move_to_completed_fetching_next

    async def run(self) -> None:
        """The port's `Worker.run` with `concurrency` slots (`_slot`) in `processing`.

        As the port's: the client names, the lock manager and the stalled-jobs check start
        first; a pause waits for `resume_event`; the loop ends once closing, and on the way out
        stops the check and closes the lock manager. The slots end when the worker pauses
        (`pause()` waits for `processing` to end, as it waits for the port's tasks) or closes
        (after their jobs; a forced close cancels them, as it cancels the port's tasks).
        """
        if self.running:
            raise RuntimeError("Worker is already running")
        await self._ensure_client_names()
        self.lockManager.start()
        self.stalledCheckTimer = Timer(self.opts.get("stalledInterval") / 1000,
                                       self.runStalledJobsCheck, self.emit)
        self.running = True
        try:
            while not (self.closed or self.closing):
                if self.paused:
                    await self.resume_event.wait()
                    continue
                self.processing = {asyncio.ensure_future(self._slot())
                                   for _ in range(self.opts.get("concurrency"))}
                await asyncio.wait(self.processing)
        finally:
            self.running = False
            if not self.closing:  # run() itself was cancelled: so are its slots
                for task in self.processing:
                    task.cancel()
                if self.waiting and not self.waiting.done():
                    self.waiting.cancel()
                await asyncio.gather(*self.processing, return_exceptions=True)
                self.processing.clear()
            if self.stalledCheckTimer is not None:
                with contextlib.suppress(Exception):
                    self.stalledCheckTimer.stop()
            await self.lockManager.close()

    async def _slot(self) -> None:
        """Fetch a job (in turn with the other slots), process it, until paused or closing.

        A failed fetch is the port's `retryIfFailed` business (connection errors retried after
        `runRetryDelay`, others emitted as `error`, after a short pause), as in the port's loop.
        """
        while not (self.closing or self.paused or self.closed):
            self._token_postfix += 1
            token = f"{self.id}:{self._token_postfix}"
            job = await self.retryIfFailed(functools.partial(self.getNextJob, token),
                                           {"delay_in_ms": self.opts.get("runRetryDelay"),
                                            "only_emit_error": True})
            if job is not None:
                await self.processJob(job, token)

    async def getNextJob(self, token: str) -> Job | None:
        """Fetch jobs one at a time, as Node's main loop does: one task waits, the rest queue.

        The port's run loop starts up to `concurrency` fetches at once as soon as one job
        arrives; each calls `moveToActive` while the queue is not known to be drained, so one
        job costs up to `concurrency` script calls, nearly all of them empty, and as many
        tasks. Here the fetches (the blocking wait for the marker included) take turns: after
        the first empty reply the next task blocks for the marker and the others wait their
        turn without touching Redis.
        """
        job: Job | None = None
        try:
            async with self._fetching:
                if self.before_fetch is not None:
                    await self.before_fetch()
                if self.fetch_turn is not None and not self.closing and not self.paused:
                    await self.fetch_turn.acquire()
                if self.closing or self.paused:
                    return None
                job = await super().getNextJob(token)
                return job
        finally:
            self._after_fetch(job)

    def _after_fetch(self, job: Job | None) -> None:
        """Give the fetch turn up once the job just fetched fills the last free slot."""
        if self.fetch_turn is None:
            return
        full = job is not None and self._running + 1 >= int(self.opts.get("concurrency", 1))
        if full or self.closing or self.paused:
            self.fetch_turn.release()

    async def close(self, force: bool = False) -> None:
        if self.fetch_turn is not None:
            self.fetch_turn.interrupt()
        await super().close(force)

    async def pause(self, do_not_wait_active: bool = False) -> None:
        if self.fetch_turn is not None:
            self.fetch_turn.interrupt()
        await super().pause(do_not_wait_active)

    async def processJob(self, job: Job, token: str) -> None:
        """Process `job`, then each job its completion fetched, in this same task (same token).

        A fetched job is already active and locked for `token`. Processing it here rather than
        handing it back to the port's run loop means a graceful `close()` waits for it: the
        port's teardown waits only for the tasks running when it started, and its run loop stops
        taking jobs once closing, so a job fetched by a completion in flight at that moment
        would stay active until the stalled check. It also spares the run loop a task and an
        `asyncio.wait` over every slot per job. Completions fetch nothing once closing or
        paused, which ends the loop; a forced close cancels it like any processing task.
        """
        self._running += 1
        try:
            next_job: Job | None = job
            while next_job is not None:
                await super().processJob(next_job, token)
                next_job = await self._fetched_job(token)
        finally:
            self._running -= 1

    async def _fetched_job(self, token: str) -> Job | None:
        fetched = self._fetched.pop(token, None)
        if fetched is None:
            return None
        job_data, job_id, limit_until, delay_until = fetched
        next_job: Job | None = await self.nextJobFromJobData(
            job_data, job_id, limit_until or 0, delay_until or 0, token)
        if next_job is not None:
            self.emit("active", next_job, "waiting")
        return next_job


class CompletionHooks(Protocol):
    """What slackq adds to a job's completion (`complete_with`)."""

    def commands(self, job_id: str, token: str) -> Sequence[tuple[Any, ...]]:
        """Commands sent in the same transaction as the completion, before it."""

    async def retry(self, error: Exception) -> None:
        """The completion failed: back off before the next try, or raise to give up."""

    async def unapplied(self, job_id: str, token: str, error: Exception) -> None:
        """The completion went through but Redis refused one of the commands (`error`, e.g.
        `NOSCRIPT` from a Redis restarted with an empty script cache): apply them now, alone."""

    def settled(self, job_id: str, token: str) -> None:
        """Redis took the commands (the completion itself may still have been refused)."""


def complete_with(worker: Worker, hooks: CompletionHooks) -> None:
    """Complete `worker`'s jobs with `hooks.commands` in the same round trip, and retry until
    Redis takes them.

    `MULTI`, the hooks' commands, the port's unchanged `moveToFinished` `EVALSHA`, `EXEC`: one
    round trip. A write refused while queueing aborts the whole transaction, but a script
    missing from Redis' cache (`NOSCRIPT`) is only found when `EXEC` runs it, and the other
    commands are applied all the same. So: if the completion was not applied (unreachable,
    aborted, or `moveToFinished` itself `NOSCRIPT`), the same transaction is sent again after
    `hooks.retry` (or after loading the port's script), with the same finishing time, while the
    job's lock keeps being renewed (the job is still in flight for the port); the hooks'
    commands must be idempotent. If the completion was applied and one of the hooks' commands
    was not, `hooks.unapplied` applies them on their own before the completion returns. A
    reply the port reads as an error (the lock was lost meanwhile) is raised as the port raises
    it, once the hooks' commands are known to be applied. A `FetchNextWorker` still fetches its
    next job with the completion.
    """
    scripts = worker.scripts
    client: aioredis.Redis = worker.redisConnection.conn
    finish = scripts.commands["moveToFinished"]

    async def move_to_completed(job: Job, return_value: Any, remove_on_complete: Any,
                                token: str, fetch_next: bool = False) -> Any:
        fetch = isinstance(worker, FetchNextWorker) and not (worker.closing or worker.paused)
        keys, args = scripts.moveToCompletedArgs(job, return_value, remove_on_complete, token,
                                                 fetch)
        call = ("EVALSHA", finish.sha, len(keys), *keys, *args)
        while True:
            try:
                *extra, raw = await _send(client, [*hooks.commands(str(job.id), token), call])
            except Exception as exc:  # hooks.retry decides: back off, or re-raise
                await hooks.retry(exc)
                continue
            if isinstance(raw, NoScriptError):  # a restarted Redis has no scripts cached yet
                await client.script_load(finish.script)
                continue
            if isinstance(raw, Exception):
                await hooks.retry(raw)
                continue
            break
        refused = next((reply for reply in extra if isinstance(reply, Exception)), None)
        if refused is not None:
            await hooks.unapplied(str(job.id), token, refused)
        hooks.settled(str(job.id), token)
        if isinstance(raw, int) and raw < 0:
            raise scripts.finishedErrors({"code": raw, "jobId": job.id,
                                          "command": "moveToFinished", "state": "active"})
        result = raw2NextJobData(raw) if raw is not None else None
        if fetch:
            worker._fetched[token] = result
        return {"result": result, "finishedOn": args[1]}

    worker.backend.moveToCompleted = move_to_completed


async def _send(client: aioredis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The replies to `commands`, sent in one transaction if there are several; a command
    Redis refused while running the transaction has its error as its reply.

    On a pooled worker connection (`LeanRedis`) the transaction is written straight on one of
    its connections (`LeanRedis.multi_exec`), not through redis-py's `Pipeline`."""
    if len(commands) == 1:
        try:
            return [await client.execute_command(*commands[0])]  # type: ignore[no-untyped-call]
        except NoScriptError as exc:
            return [exc]
    if isinstance(client, LeanRedis):
        return await client.multi_exec(commands)
    async with client.pipeline(transaction=True) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


def renew_locks_until_jobs_end(worker: Worker) -> None:
    """Keep renewing the locks of in-flight jobs until they end, through a graceful close.

    The port's `Worker.run()` returns as soon as a close stops its fetching and closes its lock
    manager on the way out, while the jobs it started may run on for the whole grace period.
    Their locks then lapse after `lockDuration`: another worker's stalled check hands the job
    to a second run, and its completion fails with "Missing lock" (a job longer than
    `WORKER_LOCK_DURATION_MS` past SIGTERM was never recorded). Node's worker closes its lock
    manager only once its jobs are done; this makes the port do the same (replacing the close
    of `worker.lockManager` on the instance). A forced close cancels the jobs, which ends the
    wait.
    """
    lock_manager = worker.lockManager
    close_lock_manager = lock_manager.close

    async def close_after_jobs() -> None:
        try:
            running = [task for task in worker.processing if not task.done()]
            if running and not worker.forceClosing:
                await asyncio.wait(running)
        finally:
            await close_lock_manager()

    lock_manager.close = close_after_jobs


def set_worker_retry(worker: Worker, commands: Retry, blocking: Retry | None = None) -> None:
    """Give the clients the port built for `worker` these retries (`blocking`: its blocking
    wait's client, `commands` when not given).

    The port builds them with 20 retries and a backoff doubling to 20 s (~350 s in all). When
    the Worker was given a client (a pool) rather than options, both are that client.
    """
    worker.redisConnection.conn.set_retry(commands)
    worker.blockingRedisConnection.conn.set_retry(blocking or commands)


async def load_server_capabilities(worker: Worker, *, eviction_checked: bool = False) -> None:
    """Read the server's version and capabilities before `worker.run()`.

    Without them the port rounds short delays up to ~1 s (it assumes a server that cannot block
    for 1 ms). `eviction_checked`: the caller has checked the eviction policy itself (and
    allowed it on purpose), so the port's own warning about it is silenced.
    """
    with warnings.catch_warnings():
        if eviction_checked:
            warnings.filterwarnings("ignore", message="IMPORTANT! Eviction policy")
        await worker.blockingRedisConnection.getRedisVersion()
        await worker.redisConnection.getRedisVersion()


def in_flight_jobs(worker: Worker) -> list[Job]:
    """The jobs `worker` is processing right now."""
    return [job for job, _token in worker.jobs]


def set_retry_delay(job: Job, delay_ms: int) -> None:
    """Make the port wait exactly `delay_ms` before retrying this failed attempt.

    The port computes the delay in `Job.moveToFailed` from the in-memory `job.opts["backoff"]`;
    a `fixed` backoff of `delay_ms` gives `delay_ms`. Only this in-memory copy changes: the
    stored job keeps its options, so Node workers see the job as it was added.
    """
    job.opts["backoff"] = {"type": "fixed", "delay": delay_ms}


def standard_add_calls(queue: Queue, jobs: Iterable[Job]) -> list[tuple[Any, ...]]:
    """`EVALSHA` arguments adding each of `jobs` as `Queue.add` would (no delay, no priority).

    The same script, keys and arguments as the port's `Scripts.addStandardJob`: the reply is
    the job's id, or a negative error code.
    """
    scripts = queue.scripts
    sha = scripts.commands["addStandardJob"].sha
    keys = _STANDARD_KEYS.get(queue)
    if keys is None:  # the same for every job of the queue; the webhook prepares jobs one by one
        keys = _STANDARD_KEYS[queue] = tuple(scripts.getKeys(list(STANDARD_JOB_KEYS)))
    return [(sha, len(keys), *keys, *scripts.addJobArgs(job), job.timestamp) for job in jobs]


_STANDARD_KEYS: weakref.WeakKeyDictionary[Queue, tuple[str, ...]] = weakref.WeakKeyDictionary()


def queue_client(queue: Queue) -> aioredis.Redis:
    """The Redis client `queue` sends its commands through (the one it was given, if any)."""
    client: aioredis.Redis = queue.client
    return client


# The port's modules that print tracebacks to stderr themselves (`traceback.print_exc()`):
# `utils.extract_result` for a job task that raised, `Worker.run`'s loop, `Worker.extendLocks`.
PRINTING_MODULES = ("bullmq.utils", "bullmq.worker")


class _LoggedTraceback:
    """Stands in for the `traceback` module inside a port module: `print_exc()` becomes one
    structured, redacted log line (a printed traceback is many lines of raw text on stderr,
    which no log collector groups and no redaction sees); the rest is the real module."""

    def __init__(self, module_name: str) -> None:
        self._log = structlog.get_logger(module_name)

    def print_exc(self, limit: int | None = None, file: Any = None, chain: bool = True) -> None:
        self._log.error("bullmq_port_error", exc_info=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)


def route_port_tracebacks() -> None:
    """Make the port's own `traceback.print_exc()` calls log through structlog (idempotent)."""
    for name in PRINTING_MODULES:
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "traceback", None), _LoggedTraceback):
            setattr(module, "traceback", _LoggedTraceback(name))  # noqa: B010 - a module global
