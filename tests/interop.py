"""Helpers for the Node BullMQ interop tests: run tests/node/interop/*.js, read their JSON lines,
drive a job's retries, and read a job back the way BullMQ stores it.

Every Node script takes one JSON config argument, prints one JSON object per line and exits on its
own (after its work, or at its deadline), so a test never leaves a Node process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from bullmq import Job, Queue

from slackq.embedded import PROJECT_ROOT

NODE_DIR = PROJECT_ROOT / "tests" / "node"
SCRIPTS = NODE_DIR / "interop"
NODE_BULLMQ = NODE_DIR / "node_modules" / "bullmq" / "package.json"


def node_skip_reason() -> str | None:
    """Why the interop tests cannot run here, or None (CI runs `npm ci` first, so they run)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not on PATH (install Node 20; `python3 dev.py test` then runs `npm ci`)"
    if not NODE_BULLMQ.exists():
        return "tests/node/node_modules missing: run `npm ci` in tests/node (dev.py test does)"
    return None


def node_bullmq_version() -> str:
    return str(json.loads(NODE_BULLMQ.read_text())["version"])


async def until(condition: Callable[[], Awaitable[Any]], within: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` after `within` s."""
    deadline = time.monotonic() + within
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class NodeScript:
    """One running `node tests/node/interop/<name>.js <config>` and the messages it printed."""

    name: str
    process: asyncio.subprocess.Process
    messages: list[dict[str, Any]] = field(default_factory=list)
    stderr: bytearray = field(default_factory=bytearray)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, name: str, config: dict[str, Any]) -> NodeScript:
        process = await asyncio.create_subprocess_exec(
            "node", str(SCRIPTS / f"{name}.js"), json.dumps(config),
            cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        script = cls(name, process)
        script._readers = [asyncio.create_task(script._read_stdout()),
                           asyncio.create_task(script._read_stderr())]
        return script

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            text = line.decode().strip()
            if text:
                self.messages.append(json.loads(text))

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr.extend(chunk)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("event") == event]

    async def wait_for(
        self, event: str, count: int = 1, within: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait until the script printed `count` messages of `event`; fail if it exits first."""

        async def enough() -> list[dict[str, Any]] | None:
            found = self.of(event)
            if len(found) >= count:
                return found
            if self.process.returncode is not None:
                await asyncio.gather(*self._readers)
                found = self.of(event)
                if len(found) >= count:
                    return found
                raise AssertionError(self._describe(f"exited before {count} {event!r}"))
            return None

        return list(await until(enough, within, f"{count} {event!r} from {self.name}.js"))

    async def finish(self, within: float = 15.0) -> list[dict[str, Any]]:
        """Wait for the script to exit by itself with status 0; return everything it printed."""
        try:
            await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            await self.stop()
            raise AssertionError(self._describe(f"still running after {within}s")) from None
        await asyncio.gather(*self._readers)
        assert self.process.returncode == 0, self._describe("failed")
        return self.messages

    async def stop(self) -> None:
        """Terminate the script if it still runs (SIGTERM: it closes its BullMQ objects)."""
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def _describe(self, what: str) -> str:
        stderr = self.stderr.decode(errors="replace")[-3000:]
        return (f"{self.name}.js {what} (exit {self.process.returncode})\n"
                f"stdout (last 20): {self.messages[-20:]}\nstderr: {stderr}")


def node_config(redis_url: str, queue: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {"redisUrl": redis_url, "queue": queue, "prefix": prefix, "deadlineMs": 30_000, **extra}


@dataclass
class StoredJob:
    """A job hash as BullMQ stores it, decoded the way both implementations read it."""

    id: str
    fields: dict[str, str]
    state: str

    @property
    def opts(self) -> dict[str, Any]:
        return dict(json.loads(self.fields.get("opts", "{}")))

    @property
    def data(self) -> Any:
        return json.loads(self.fields["data"])

    @property
    def attempts_made(self) -> int:
        return int(self.fields.get("atm") or self.fields.get("attemptsMade") or 0)

    @property
    def failed_reason(self) -> str | None:
        return self.fields.get("failedReason")

    @property
    def returnvalue(self) -> Any:
        raw = self.fields.get("returnvalue")
        return None if raw is None else json.loads(raw)


STATES = ("completed", "failed", "delayed", "active", "wait", "prioritized", "paused")
_LISTS = ("active", "wait", "paused")


async def stored_job(client: aioredis.Redis, prefix: str, queue: str, job_id: str) -> StoredJob:
    """The job's hash and state read in one MULTI, so both belong to the same moment."""
    key = f"{prefix}:{queue}"
    async with client.pipeline(transaction=True) as pipe:
        pipe.hgetall(f"{key}:{job_id}")
        for name in STATES:
            if name in _LISTS:
                pipe.lpos(f"{key}:{name}", job_id)
            else:
                pipe.zscore(f"{key}:{name}", job_id)
        fields, *positions = await pipe.execute()
    found = [name for name, position in zip(STATES, positions, strict=True) if position is not None]
    state = found[0] if len(found) == 1 else ("missing" if not fields else f"unknown {found}")
    return StoredJob(job_id, {str(k): str(v) for k, v in fields.items()}, state)


@dataclass
class RetryTrace:
    """What happened to one job between its first attempt and its final state."""

    delays_ms: list[int]
    first_retry_waited_ms: int
    final: StoredJob


async def drive_retries(
    client: aioredis.Redis, prefix: str, queue: Queue, job_id: str, within: float = 20.0
) -> RetryTrace:
    """Follow a failing job: record the backoff delay BullMQ scheduled for each retry.

    The first retry runs after its real delay (the measured gap between the starts of the first
    two attempts is returned); later retries are promoted with BullMQ's own `promote` as soon as
    their delay is recorded, so a 5-attempt job does not take 15 s. Deferrals that do not count
    as an attempt (pacing, 429) are left to run their course.
    """
    delays: dict[int, int] = {}
    first_started = 0
    first_wait = 0

    async def next_step() -> StoredJob | None:
        nonlocal first_started, first_wait
        job = await stored_job(client, prefix, queue.name, job_id)
        started = int(job.fields.get("processedOn") or 0)
        if first_started and not first_wait and started > first_started:
            first_wait = started - first_started
        if job.state == "failed":
            return job
        # A failed attempt moves the job to delayed with `atm` one higher. A deferral (slackq's
        # pacing, a 429) moves it there without burning an attempt: same `atm`, ignored here.
        if job.state == "delayed" and job.attempts_made > 0 and job.attempts_made not in delays:
            delays[job.attempts_made] = int(job.fields["delay"])
            if job.attempts_made == 1:
                first_started = started
            else:
                await _promote(queue, job_id)
        return None

    final = await until(next_step, within, f"job {job_id} to end in failed")
    assert sorted(delays) == list(range(1, len(delays) + 1)), f"missed a retry: {delays}"
    return RetryTrace([delays[k] for k in sorted(delays)], first_wait, final)


async def _promote(queue: Queue, job_id: str) -> None:
    job = await Job.fromId(queue, job_id)
    assert job is not None, f"job {job_id} vanished"
    await job.promote()


@contextlib.asynccontextmanager
async def node_script(name: str, config: dict[str, Any]) -> AsyncIterator[NodeScript]:
    """`async with node_script("worker", cfg) as node:`: always stopped on the way out."""
    script = await NodeScript.start(name, config)
    try:
        yield script
    finally:
        await script.stop()
