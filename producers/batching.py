"""Coalescing concurrent `Queue.add` calls into one pipelined round trip to Redis.

On this kind of host a loopback `send` costs ~100 us of CPU, more than everything else a Redis
command costs redis-py: one round trip per webhook request makes Redis I/O the web process's
main cost. `AddBatcher` sends the adds that arrive while a round trip is in flight together, as
one pipeline of the port's own `addStandardJob` EVALSHA calls (same Lua script, same keys and
arguments as `Queue.add`, from `slackq.bullmq_seam.standard_add_calls`), so under load one write
and one read serve many requests.

An add that finds nothing in flight sends its EVALSHA itself, from its own task: a lone add
(nearly every add below a few hundred requests a second) then costs no future, no sender task
and no hand-over between tasks (~30 us less CPU than queueing it for the sender). Adds that
arrive while any round trip is in flight queue up and go out together once it is done.

A job's future resolves with its id only from Redis' reply to that job's EVALSHA: a resolved
future means the job is stored, as with `Queue.add`. Anything unusual (a delayed or prioritised
job, NOSCRIPT after a Redis restart) goes through the port's own `Queue.add`.

Each job's script arguments are prepared in its caller's task, before it joins a batch: a job
that cannot be prepared (data BullMQ cannot serialise, say) fails that one `add` with
`JobNotStorable` (a 400), and no batch ever holds it. Once, such a job raised inside the shared
send task and every request of its batch waited out its budget for a 503.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Job, Queue
from redis.exceptions import NoScriptError, ResponseError

from producers.errors import JobNotStorable
from slackq.bullmq_seam import queue_client, standard_add_calls

MAX_BATCH = 256

# A job, its addStandardJob EVALSHA arguments, and the future its `add` awaits.
Pending = tuple[Job, tuple[Any, ...], asyncio.Future[str]]


class AddBatcher:
    """`add()` as `Queue.add(...).id`, batched with whatever else is waiting to be sent."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._pending: list[Pending] = []
        self._sender: asyncio.Task[None] | None = None
        self._direct = False  # an add is sending its own EVALSHA

    async def add(self, name: str, data: dict[str, Any], opts: dict[str, Any]) -> str:
        """Store one job; return its id (an existing job's id when the id is already taken)."""
        job, call = self._prepare(name, data, opts)
        if job.opts.get("delay") or job.opts.get("priority"):
            return str((await self.queue.add(name, data, opts)).id)
        if not self._direct and (self._sender is None or self._sender.done()):
            return await self._add_alone(job, call)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((job, call, future))
        self._start_sender()
        return await future

    async def _add_alone(self, job: Job, call: tuple[Any, ...]) -> str:
        """Nothing in flight: send this job's EVALSHA now; what queues meanwhile goes next."""
        self._direct = True
        try:
            [reply] = await self._evalsha([call])
        finally:  # cancelled too (the request's budget): the queued adds must not be stranded
            self._direct = False
            self._start_sender()
        result = await self._result(job, reply)
        if isinstance(result, BaseException):
            raise result
        return result

    def _start_sender(self) -> None:
        if self._pending and not self._direct and (self._sender is None or self._sender.done()):
            self._sender = asyncio.create_task(self._send_all())

    def _prepare(self, name: str, data: dict[str, Any], opts: dict[str, Any],
                 ) -> tuple[Job, tuple[Any, ...]]:
        """The job and its script arguments; `JobNotStorable` for anything that fails here."""
        try:
            job = Job(self.queue, name, data, opts)
            [call] = standard_add_calls(self.queue, [job])
        except Exception as exc:  # any failure to prepare one job is that job's alone
            raise JobNotStorable(
                f"the job's data cannot be stored in BullMQ ({type(exc).__name__})") from exc
        return job, call

    async def _send_all(self) -> None:
        # One pipeline in flight at a time; what arrives meanwhile makes up the next one.
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            live = [pending for pending in batch if not pending[2].done()]
            if live:
                await self._send(live)

    async def _send(self, batch: list[Pending]) -> None:
        try:
            replies = await self._evalsha([call for _, call, _ in batch])
        except BaseException as exc:  # every waiter must hear of it
            for _, _, future in batch:
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (job, _, future), reply in zip(batch, replies, strict=True):
            result = await self._result(job, reply)
            if isinstance(result, BaseException):
                _fail(future, result)
            elif not future.done():
                future.set_result(result)

    async def _evalsha(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Replies in order; a Redis error reply is returned, not raised (as in a pipeline)."""
        client = queue_client(self.queue)
        if len(calls) == 1:  # a lone add: a plain EVALSHA costs ~20 us less CPU than a pipeline
            try:
                return [await client.evalsha(*calls[0])]
            except ResponseError as exc:  # NoScriptError included
                return [exc]
        pipe = client.pipeline(transaction=False)
        for call in calls:  # not pipe.evalsha: a Redis Cluster pipeline refuses that method
            pipe.execute_command("EVALSHA", *call)
        return list(await pipe.execute(raise_on_error=False))

    async def _result(self, job: Job, reply: Any) -> str | BaseException:
        """The stored job's id from its EVALSHA reply, or the error to raise to its caller."""
        if isinstance(reply, NoScriptError):  # Redis restarted: the port loads the script again
            try:
                reply = (await self.queue.add(job.name, job.data, job.opts)).id
            except Exception as exc:  # handed to the waiter
                reply = exc
        if isinstance(reply, int) and reply < 0:
            return ResponseError(f"addStandardJob returned error code {reply}")
        if isinstance(reply, BaseException):
            return reply
        return str(reply)


def _fail(future: asyncio.Future[str], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
